"""Traffic capture: PII masked before storage, feedback on known responses, export as chat JSONL."""

from __future__ import annotations

import json
import threading

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from hone.cli import app
from hone.data.formats import read_dataset
from hone.monitor.capture import CaptureStore

EMAIL, PHONE = "jane.doe@example.com", "+1 415-555-0132"

pytest_plugins = ["store_fixtures"]  # the db_url fixture: SQLite, and PostgreSQL when configured


@pytest.fixture
def store(db_url) -> CaptureStore:
    return CaptureStore(db_url)


def stored_rows(store: CaptureStore, where: str) -> list:
    with store.engine.connect() as db:
        return db.execute(text(f"SELECT response_id, request_json, response_text, usage_json "
                               f"FROM captured_requests WHERE {where}")).all()


def chat_request(text: str, model: str = "support") -> dict:
    return {"model": model, "messages": [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": text}], "max_tokens": 32}


def test_pii_in_requests_and_answers_is_masked_before_it_is_stored(store):
    store.record(response_id="chatcmpl-pii", model="support",
                 request={**chat_request(f"I am {EMAIL}, call me on {PHONE} about order 1680"), "user": EMAIL},
                 response_text=f"We will call {PHONE}.", usage={"prompt_tokens": 20, "completion_tokens": 6})
    ((_, request_json, response_text, usage),) = stored_rows(store, "response_id = 'chatcmpl-pii'")
    stored = request_json + response_text
    assert EMAIL not in stored and "415-555-0132" not in stored
    user = json.loads(request_json)["messages"][1]["content"]
    assert user == "I am <EMAIL_ADDRESS>, call me on <PHONE_NUMBER> about order 1680"
    assert response_text == "We will call <PHONE_NUMBER>."
    assert json.loads(request_json)["user"] == "<EMAIL_ADDRESS>"
    assert json.loads(request_json)["max_tokens"] == 32 and json.loads(usage)["completion_tokens"] == 6


def test_content_parts_and_completion_prompts_are_masked(store):
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": f"mail {EMAIL}"}]}]}
    store.record(response_id="parts", model="support", request=parts, response_text="ok", usage={})
    store.record(response_id="cmpl", model="base", request={"prompt": f"Contact: {EMAIL}\nReply:"},
                 response_text="Thanks", usage={})
    rows = {row[0]: row[1] for row in stored_rows(store, "response_id IN ('parts', 'cmpl')")}
    assert EMAIL not in rows["parts"] + rows["cmpl"]
    assert json.loads(rows["cmpl"])["prompt"] == "Contact: <EMAIL_ADDRESS>\nReply:"


def test_feedback_on_an_unknown_response_raises_key_error(store):
    with pytest.raises(KeyError):
        store.feedback(response_id="never-served", rating=1, correction=None)
    store.record(response_id="known", model="support", request=chat_request("hi"), response_text="hello", usage={})
    with pytest.raises(ValueError, match="rating, a correction"):
        store.feedback(response_id="known", rating=None, correction=None)


def test_a_response_id_is_captured_once(store):
    store.record(response_id="twice", model="support", request=chat_request("hi"), response_text="hello", usage={})
    with pytest.raises(ValueError, match="already captured"):
        store.record(response_id="twice", model="support", request=chat_request("hi"), response_text="x", usage={})


def test_export_writes_chat_jsonl_with_corrections_and_rating_filter(store, tmp_path):
    for i, model in enumerate(["legal", "support", "support"]):
        store.record(response_id=f"r{i}", model=model, request=chat_request(f"question {i}", model),
                     response_text=f"answer {i}", usage={"completion_tokens": 2})
    store.feedback(response_id="r1", rating=2, correction=None)
    store.feedback(response_id="r1", rating=5, correction=f"better answer, write to {EMAIL}")  # the latest counts
    store.feedback(response_id="r2", rating=1, correction=None)

    everything = tmp_path / "all.jsonl"
    assert store.export(everything) == 3
    dataset = read_dataset(everything)  # hone's own reader: the export is training data as it stands
    examples = dataset.examples
    assert dataset.format == "chat" and not dataset.problems and len(examples) == 3
    answers = [example.messages[-1]["content"] for example in examples]
    assert answers == ["answer 0", "better answer, write to <EMAIL_ADDRESS>", "answer 2"]
    assert [m["role"] for m in examples[0].messages] == ["system", "user", "assistant"]

    good = tmp_path / "good.jsonl"
    assert store.export(good, min_rating=4) == 1
    assert json.loads(good.read_text())["messages"][-1]["content"].startswith("better answer")
    assert store.export(tmp_path / "legal.jsonl", model="legal") == 1
    store.record(response_id="empty", model="legal", request=chat_request("q", "legal"), response_text="", usage={})
    assert store.export_report(tmp_path / "legal.jsonl", model="legal") == {
        "out": str(tmp_path / "legal.jsonl"), "examples": 1, "skipped": 1}  # an empty answer is not training data
    store.feedback(response_id="empty", rating=None, correction="the right answer")
    assert store.export(tmp_path / "legal.jsonl", model="legal") == 2
    assert not list(tmp_path.glob("*.partial"))

    figures = store.stats()
    assert figures["captured"] == 4 and figures["per_model"] == {"legal": 2, "support": 2}
    assert figures["with_feedback"] == 3 and figures["corrections"] == 2


def test_record_from_many_threads(store):
    errors: list[BaseException] = []

    def serve(worker: int) -> None:
        try:
            for i in range(10):
                store.record(response_id=f"w{worker}-{i}", model="support", request=chat_request(f"q {i}"),
                             response_text="a", usage={})
        except BaseException as error:  # noqa: BLE001  (reported by the assertion below)
            errors.append(error)

    threads = [threading.Thread(target=serve, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and store.stats()["captured"] == 40


def test_cli_stats_and_export(store, db_url, tmp_path):
    store.record(response_id="c1", model="support", request=chat_request("hello"), response_text="hi", usage={})
    store.feedback(response_id="c1", rating=4, correction=None)
    runner = CliRunner()
    stats = runner.invoke(app, ["capture", "stats", "--db", db_url, "--json"])
    assert stats.exit_code == 0 and json.loads(stats.stdout)["captured"] == 1
    out = tmp_path / "out.jsonl"
    exported = runner.invoke(app, ["capture", "export", str(out), "--min-rating", "4", "--model", "support",
                                   "--db", db_url, "--json"])
    assert exported.exit_code == 0, exported.output
    assert json.loads(exported.stdout)["examples"] == 1
    assert json.loads(out.read_text())["messages"][-1] == {"role": "assistant", "content": "hi"}
