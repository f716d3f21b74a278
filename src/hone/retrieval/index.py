"""Document passages and a small in-memory vector index searched by cosine similarity."""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hone.data.curate.documents import document_files, text_passages
from hone.errors import HoneError
from hone.retrieval.embeddings import Embedder


@dataclass
class Passage:
    """A piece of a document: its text, the file it came from and the line its first word is on."""

    text: str
    source: str
    line: int


def chunk_documents(folder: Path, words_per_chunk: int = 120, overlap_words: int = 20) -> list[Passage]:
    """Every .txt/.md file under `folder` split into passages of at most `words_per_chunk` words.

    Whole paragraphs are grouped while they fit; a paragraph longer than that is cut into windows that
    share `overlap_words` words with the previous one, so no sentence is only ever seen cut in half.
    """
    if words_per_chunk < 1 or not 0 <= overlap_words < words_per_chunk:
        raise HoneError(f"cannot chunk with words_per_chunk={words_per_chunk} and overlap_words={overlap_words}",
                        hint="use words_per_chunk >= 1 and 0 <= overlap_words < words_per_chunk")
    files = document_files(folder) if folder.is_dir() else []
    if not files:
        raise HoneError(f"no documents in {folder}: expected .txt or .md files there",
                        hint="point at a folder that holds your documents as UTF-8 .txt or .md files")
    passages = [passage for path in files for passage in _file_passages(path, words_per_chunk, overlap_words)]
    if not passages:
        raise HoneError(f"the documents in {folder} hold no text", hint="check that the files are not empty")
    return passages


def _file_passages(path: Path, words_per_chunk: int, overlap_words: int) -> list[Passage]:
    """The passages of one document file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise HoneError(f"{path} is not UTF-8 text ({error})", hint="convert it to UTF-8 or remove it") from error
    return [Passage(text=chunk, source=str(path), line=line)
            for line, chunk in text_passages(text, words_per_chunk, overlap_words)]


@dataclass
class Hit:
    """One search result: the item's position in the index, its cosine similarity and its payload."""

    position: int
    score: float
    payload: Any


class VectorIndex:
    """Unit-length vectors with a payload each, searched exhaustively by cosine similarity."""

    def __init__(self, vectors: np.ndarray, payloads: list, embedder: Embedder):
        if len(vectors) != len(payloads):
            raise ValueError(f"{len(vectors)} vectors but {len(payloads)} payloads")
        self.vectors = vectors
        self.payloads = payloads
        self.embedder = embedder

    @classmethod
    def build(cls, texts: list[str], embedder: Embedder, payloads: list | None = None) -> VectorIndex:
        """Embed `texts` into a new index; each text's payload defaults to the text itself."""
        return cls(embedder.encode(texts), list(texts) if payloads is None else list(payloads), embedder)

    def __len__(self) -> int:
        return len(self.payloads)

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        """The `k` items most similar to each query, best first (fewer if the index is smaller)."""
        return self.search_vectors(self.embedder.encode(queries), k)

    def search_vectors(self, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        """The `k` items most similar to each unit-length query vector in `vectors` [n, dimension], best first."""
        k = min(k, len(self))
        if k < 1:
            return [[] for _ in range(len(vectors))]
        scores = np.asarray(vectors, dtype=np.float32) @ self.vectors.T
        # argpartition finds the top k in linear time; only those k are then sorted.
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        return [self._ranked_hits(row_scores, row_top) for row_scores, row_top in zip(scores, top, strict=True)]

    def _ranked_hits(self, scores: np.ndarray, positions: np.ndarray) -> list[Hit]:
        """Hits for `positions`, highest score first and, on ties, lowest position first."""
        order = np.lexsort((positions, -scores[positions]))
        return [Hit(int(positions[i]), float(scores[positions[i]]), self.payloads[positions[i]]) for i in order]

    def save(self, path: Path) -> None:
        """Write the index to one .npz file: the vectors, plus the embedder name and payloads as JSON."""
        meta = {"embedder": self.embedder.name, "payloads": self.payloads}
        partial = path.with_name(path.name + ".partial")
        with partial.open("wb") as file:
            np.savez(file, vectors=self.vectors, meta=np.array(json.dumps(meta)))
        # Renaming last means a crash mid-write never leaves a truncated index under the real name.
        os.replace(partial, path)

    @classmethod
    def load(cls, path: Path, embedder: Embedder) -> VectorIndex:
        """Read an index written by `save`; `embedder` must be the model that built it."""
        try:
            with np.load(path, allow_pickle=False) as data:
                vectors, meta = data["vectors"], json.loads(str(data["meta"]))
        except FileNotFoundError as error:
            raise HoneError(f"no vector index at {path}", hint="build and save the index first") from error
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
            raise HoneError(f"{path} is not a hone vector index ({error})", hint="rebuild the index") from error
        if meta["embedder"] != embedder.name:
            raise HoneError(
                f"the vector index {path} was built with the embedding model '{meta['embedder']}', "
                f"not '{embedder.name}'",
                hint=f"load it with load_embedder('{meta['embedder']}'), or rebuild the index with this model",
            )
        return cls(vectors, meta["payloads"], embedder)
