"""A RAG index on disk: a documents folder's passages and their embeddings in one SQLite file.

The file holds a `meta` table (format, embedder, vector dimension, chunking parameters) and a `passages`
table (text, source file relative to the documents folder, line, float32 vector as a BLOB). Searching
loads every vector once into memory and ranks by cosine similarity with `VectorIndex`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from hone.data.curate.documents import document_files
from hone.errors import HoneError
from hone.retrieval.embeddings import BUNDLED_NAME, Embedder, load_embedder
from hone.retrieval.index import Passage, VectorIndex, chunk_documents

INDEX_FORMAT = "hone-rag-index"
INDEX_VERSION = 1
SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE passages (id INTEGER PRIMARY KEY, text TEXT NOT NULL, source TEXT NOT NULL, line INTEGER NOT NULL,
                       vector BLOB NOT NULL);
"""
VECTOR_DTYPE = np.dtype("<f4")  # little-endian float32, the same bytes on every machine


def build_index(docs_dir: Path, out: Path, *, words_per_chunk: int = 120, overlap_words: int = 20,
                show_progress: bool = True) -> dict:
    """Chunk every .txt/.md file under `docs_dir`, embed the passages with all-MiniLM-L6-v2 and write the index
    to `out` (replacing an earlier index there only once the new one is complete).

    Returns build statistics: files, passages, seconds, embedder, dimension and the output path.
    """
    started = time.perf_counter()
    docs_dir, out = Path(docs_dir).expanduser().resolve(), Path(out).expanduser().resolve()
    if out.exists():
        _require_replaceable(out)
    passages = chunk_documents(docs_dir, words_per_chunk, overlap_words)
    embedder = load_embedder(BUNDLED_NAME)
    vectors = embedder.encode([p.text for p in passages], show_progress=show_progress)
    meta = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "embedder": embedder.name,
            "dimension": embedder.dimension, "words_per_chunk": words_per_chunk, "overlap_words": overlap_words,
            "docs_dir": str(docs_dir), "built_at": datetime.now(UTC).isoformat()}
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.unlink(missing_ok=True)
    _write(partial, meta, passages, vectors, docs_dir)
    # Renaming last means a crash mid-build never leaves a truncated index under the real name.
    os.replace(partial, out)
    return {"index": str(out), "files": len(document_files(docs_dir)), "passages": len(passages),
            "seconds": round(time.perf_counter() - started, 3), "embedder": embedder.name,
            "dimension": embedder.dimension}


def _require_replaceable(out: Path) -> None:
    """Only an earlier index may be replaced: a wrong --out must never destroy someone's file."""
    try:
        _read_meta(out)
    except HoneError:
        raise HoneError(f"{out} exists and is not a hone RAG index, so it was left alone",
                        hint="choose another --out path, or delete that file first") from None


def _write(path: Path, meta: dict, passages: list[Passage], vectors: np.ndarray, docs_dir: Path) -> None:
    rows = ((p.text, _relative(p.source, docs_dir), p.line, v.astype(VECTOR_DTYPE).tobytes())
            for p, v in zip(passages, vectors, strict=True))
    with closing(sqlite3.connect(path)) as db, db:
        db.executescript(SCHEMA)
        db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
        db.executemany("INSERT INTO passages (text, source, line, vector) VALUES (?, ?, ?, ?)", rows)


def _relative(source: str, docs_dir: Path) -> str:
    """The file's path inside the documents folder: portable, and reveals nothing of the server's disk."""
    return Path(source).resolve().relative_to(docs_dir).as_posix()


def _connect_read_only(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise HoneError(f"no RAG index at {path}",
                        hint="build one with `hone index build DOCS_DIR --out INDEX`")
    return sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)


def _read_meta(path: Path) -> dict:
    """The index's metadata; a HoneError when `path` is missing or is not a hone RAG index."""
    try:
        with closing(_connect_read_only(path)) as db:
            meta = {key: json.loads(value) for key, value in db.execute("SELECT key, value FROM meta")}
    except (sqlite3.DatabaseError, json.JSONDecodeError) as error:
        raise _not_an_index(path, str(error)) from None
    if meta.get("format") != INDEX_FORMAT:
        raise _not_an_index(path, "it has no hone index metadata")
    if meta.get("version") != INDEX_VERSION:
        raise HoneError(f"{path} is a version {meta.get('version')} RAG index; this hone reads version "
                        f"{INDEX_VERSION}", hint="rebuild it with `hone index build`")
    return meta


def _not_an_index(path: Path, reason: str) -> HoneError:
    return HoneError(f"{path} is not a hone RAG index ({reason})",
                     hint="pass a file written by `hone index build DOCS_DIR --out INDEX`")


class RagIndex:
    """An index file opened for search: its passages and vectors in memory, with the embedder that made them."""

    def __init__(self, path: Path, meta: dict, vectors: VectorIndex):
        self.path = path
        self.meta = meta
        self.vectors = vectors

    @property
    def embedder(self) -> str:
        return self.meta["embedder"]

    def __len__(self) -> int:
        return len(self.vectors)

    def search(self, query: str, k: int) -> list[dict]:
        """The `k` passages most similar to `query`, best first: {"text", "source", "line", "score"} each."""
        (hits,) = self.vectors.search([query], k)
        return [{**hit.payload, "score": round(hit.score, 6)} for hit in hits]


def open_index(path: str | Path, embedder: str | Path | None = None) -> RagIndex:
    """Open an index written by `build_index`; `embedder`, when given, must be the model that built it."""
    path = Path(path).expanduser().resolve()
    meta = _read_meta(path)
    model = _embedder_for(path, meta, embedder)
    with closing(_connect_read_only(path)) as db:
        rows = db.execute("SELECT text, source, line, vector FROM passages ORDER BY id").fetchall()
    vectors = np.empty((len(rows), meta["dimension"]), dtype=np.float32)
    for i, row in enumerate(rows):
        vector = np.frombuffer(row[3], dtype=VECTOR_DTYPE)
        if vector.shape != (meta["dimension"],):
            raise _not_an_index(path, f"passage {i + 1} has a vector of length {vector.size}, "
                                f"not {meta['dimension']}")
        vectors[i] = vector
    payloads = [{"text": text, "source": source, "line": line} for text, source, line, _ in rows]
    return RagIndex(path, meta, VectorIndex(vectors, payloads, model))


def _embedder_for(path: Path, meta: dict, requested: str | Path | None) -> Embedder:
    """The embedder the index was built with, checked against the requested one and the stored dimension."""
    model = load_embedder(requested if requested is not None else meta["embedder"])
    if model.name != meta["embedder"]:
        raise HoneError(f"the RAG index {path} was built with the embedding model '{meta['embedder']}', "
                        f"not '{model.name}'",
                        hint=f"search it with '{meta['embedder']}', or rebuild the index with the model you want")
    if model.dimension != meta["dimension"]:
        raise HoneError(f"the RAG index {path} holds {meta['dimension']}-dimensional vectors but "
                        f"'{model.name}' makes {model.dimension}-dimensional ones", hint="rebuild the index")
    return model
