"""RAG index files: built from a documents folder, searched by meaning, refused when wrong."""

from __future__ import annotations

import json
import sqlite3

import pytest
from typer.testing import CliRunner

from hone.cli import app
from hone.errors import HoneError
from hone.retrieval.store import build_index, open_index

DOCS = {
    "policies/refunds.md": "# Refunds\n\nRefunds are paid back to the original card within 14 days of the "
                           "returned parcel reaching our warehouse.",
    "policies/shipping.md": "# Shipping\n\nParcels to Canada cost 12 dollars and arrive in five business days.",
    "office.txt": "The office cat is called Miso.\n\nShe sleeps on the warm printer every afternoon.",
}


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("docs")
    for name, text in DOCS.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


@pytest.fixture(scope="module")
def index_path(docs, tmp_path_factory):
    path = tmp_path_factory.mktemp("index") / "docs.db"
    stats = build_index(docs, path, show_progress=False)
    assert stats["files"] == 3 and stats["passages"] == 3 and stats["embedder"] == "all-MiniLM-L6-v2"
    return path


def test_search_returns_the_right_passage_first(index_path):
    index = open_index(index_path)
    hits = index.search("how long until I get my money back?", k=3)
    assert len(hits) == 3 and set(hits[0]) == {"text", "source", "line", "score"}
    assert hits[0]["source"] == "policies/refunds.md" and hits[0]["line"] == 1
    assert "14 days" in hits[0]["text"]
    assert hits[0]["score"] > hits[1]["score"] >= hits[2]["score"]
    assert index.search("what is the cat's name", k=1)[0]["source"] == "office.txt"
    assert len(index.search("anything", k=50)) == len(index) == 3


def test_the_file_records_embedder_and_build_parameters(index_path):
    with sqlite3.connect(index_path) as db:
        meta = {key: json.loads(value) for key, value in db.execute("SELECT key, value FROM meta")}
        (blob,) = db.execute("SELECT vector FROM passages LIMIT 1").fetchone()
    assert meta["embedder"] == "all-MiniLM-L6-v2" and meta["words_per_chunk"] == 120
    assert meta["overlap_words"] == 20 and len(blob) == 384 * 4
    assert not list(index_path.parent.glob("*.partial"))


def test_chunking_parameters_shape_the_passages(docs, tmp_path):
    stats = build_index(docs, tmp_path / "small.db", words_per_chunk=6, overlap_words=2, show_progress=False)
    assert stats["passages"] > 3
    assert all(len(hit["text"].split()) <= 6 for hit in open_index(tmp_path / "small.db").search("parcel", k=100))


def test_missing_and_foreign_files_are_refused(tmp_path, docs):
    with pytest.raises(HoneError, match="no RAG index at"):
        open_index(tmp_path / "missing.db")
    text = tmp_path / "notes.txt"
    text.write_text("not a database")
    with pytest.raises(HoneError, match="is not a hone RAG index"):
        open_index(text)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE meta (key TEXT, value TEXT)")
    with pytest.raises(HoneError, match="no hone index metadata"):
        open_index(other)
    with pytest.raises(HoneError, match="exists and is not a hone RAG index"):
        build_index(docs, text, show_progress=False)
    assert text.read_text() == "not a database"


def test_an_embedder_mismatch_is_refused(index_path, tiny_model_dir, tmp_path):
    with pytest.raises(HoneError, match="built with the embedding model 'all-MiniLM-L6-v2'"):
        open_index(index_path, embedder=tiny_model_dir)
    tampered = tmp_path / "tampered.db"
    tampered.write_bytes(index_path.read_bytes())
    with sqlite3.connect(tampered) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'embedder'", (json.dumps("e5-large"),))
    with pytest.raises(HoneError, match="e5-large"):
        open_index(tampered)


def test_cli_build_and_search(docs, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli.db"
    built = runner.invoke(app, ["index", "build", str(docs), "--out", str(out), "--words-per-chunk", "50",
                                "--overlap", "5", "--json"])
    assert built.exit_code == 0, built.output
    assert json.loads(built.stdout)["passages"] == 3
    found = runner.invoke(app, ["index", "search", str(out), "shipping price to Canada", "-k", "2", "--json"])
    assert found.exit_code == 0, found.output
    hits = json.loads(found.stdout)["hits"]
    assert len(hits) == 2 and hits[0]["source"] == "policies/shipping.md"
