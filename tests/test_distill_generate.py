"""`hone distill generate` against a fake OpenAI-compatible teacher over a real socket: it writes inputs that are
deliberately exact, seed, near and same-meaning duplicates (and fails for one topic), so every drop is counted by its
reason; then it answers the kept inputs with labels, so the label balance against the seeds is known. Every example
keeps its lineage, a rerun asks the teacher nothing it already answered, and the rounds that ask again end."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import serve_app
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from typer.testing import CliRunner

from hone.cli import app as cli
from hone.distill.generate import WRITER_SYSTEM, clean_input, distinct_n, embedding_spread, total_variation

SEEDS = [("Where is my order 1234? It has been two weeks.", "shipping"),
         ("I was charged twice for my subscription this month.", "billing"),
         ("The app crashes when I open the settings page.", "technical")]
NEW, EXPERT = "a new customer", "an expert user"
INVOICE = "Please send me a copy of the invoice for my last purchase in {}, I need it for my taxes."
INPUTS = {  # (topic, persona) -> what the teacher writes
    ("refunds", NEW): 'Input: "How do I get a refund for a broken kettle?"',
    ("refunds", EXPERT): "how do I get a REFUND for a broken kettle",  # the same words: an exact duplicate
    ("passwords", NEW): "How do I reset my password on the website?",
    ("passwords", EXPERT): "How can I reset my password on the website?",  # 0.56 Jaccard, the same meaning
    ("delivery", NEW): "Where is my order 1234?? It has been two weeks",  # the first seed again
    ("delivery", EXPERT): "Can I change the delivery address after the parcel has shipped from your warehouse?",
    ("invoices", NEW): INVOICE.format("March"),
    ("invoices", EXPERT): INVOICE.format("April"),  # 0.71 Jaccard of 3-word shingles: a near duplicate
}
ROUNDS = {"same": ["Tell me about the weather today please."] * 9,  # never anything new: the rounds must end
          "two": ["Tell me about the weather today please.", "Tell me about the weather today please.",
                  "My kettle makes a loud clicking noise when it boils.", "Which payment cards do you accept?"]}


def _label(text: str) -> str:
    words = text.lower()
    if "refund" in words or "invoice" in words:
        return "billing"
    if "password" in words:
        return "account"
    return "shipping" if any(w in words for w in ("order", "parcel", "delivery")) else "technical"


def _field(request: str, name: str) -> str | None:
    return next((line.removeprefix(name) for line in request.splitlines() if line.startswith(name)), None)


def fake_teacher() -> tuple[FastAPI, Counter]:
    """An OpenAI-compatible endpoint: writes inputs by (topic, persona, variant) and answers them with a label."""
    app, calls = FastAPI(), Counter()
    app.state.sent = sent = {}  # the last conversation sent, by kind and topic or input
    lock = threading.Lock()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        last = body["messages"][-1]["content"]
        writing = body["messages"][0]["content"] == WRITER_SYSTEM
        topic, persona = _field(last, "Topic: "), _field(last, "Written by: ")
        with lock:
            calls["inputs" if writing else "answers"] += 1
            sent[("inputs", topic) if writing else ("answers", last)] = body["messages"]
        if writing and topic == "outage":
            return JSONResponse({"error": {"message": "overloaded", "type": "server_error"}}, status_code=500)
        if writing and topic in ROUNDS:
            variant = int((_field(last, "Variant: ") or "1").split()[0]) - 1
            text = ROUNDS[topic][variant]
        else:
            text = INPUTS[(topic, persona)] if writing else _label(last)
        return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "big-teacher",
                "system_fingerprint": "fp-7",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}

    return app, calls


@pytest.fixture
def seeds(tmp_path) -> Path:
    path = tmp_path / "seeds.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n"
                            for q, a in SEEDS))
    return path


def _write_config(tmp_path: Path, url: str, name: str = "generate.yaml", **settings) -> Path:
    config = {"teacher": {"url": url, "model": "big-teacher", "concurrency": 4, "retries": 1, "timeout_s": 5},
              "seeds": "seeds.jsonl", "personas": [NEW, EXPERT], "difficulties": ["easy"], "system": "Triage.",
              "out": str(tmp_path / "out"),
              "filters": {"labels": ["account", "billing", "shipping", "technical"]}} | settings
    (tmp_path / name).write_text(yaml.safe_dump(config))
    return tmp_path / name


def _generate(config: Path) -> dict:
    run = CliRunner().invoke(cli, ["distill", "generate", str(config), "--json"])
    assert run.exit_code == 0, run.output
    return json.loads(run.stdout)  # stderr has the embedding model's loading bar


def test_drops_are_counted_by_reason_every_example_keeps_its_lineage_and_a_rerun_asks_nothing_again(
        tmp_path, seeds, monkeypatch):
    monkeypatch.setattr("hone.distill.teacher.BACKOFF_S", 0.01)
    (tmp_path / "topics.txt").write_text("refunds\npasswords\n\ndelivery\ninvoices\noutage\n")
    app, calls = fake_teacher()
    with serve_app(app) as url:
        config = _write_config(tmp_path, url, topics="topics.txt", count=10, rounds=0)
        summary = _generate(config)
        counts = summary["diversity"]["counts"]
        assert counts == {"asked": 10, "generated": 8, "kept": 4, "dropped": {
            "exact_duplicate": 1, "seed_duplicate": 1, "near_duplicate": 1, "similar_meaning": 1, "failed": 2,
            "not_asked": 0}}
        assert calls == {"inputs": 8 + 2 * 2, "answers": 4}  # each outage request tried twice (1 retry)
        assert {(f["topic"], f["persona"]) for f in summary["input_failures"]} == {("outage", NEW), ("outage", EXPERT)}
        assert "HTTP 500" in summary["input_failures"][0]["error"]
        dropped = {row["topic"]: row for row in
                   map(json.loads, (tmp_path / "out" / "inputs_dropped.jsonl").read_text().splitlines())}
        assert {topic: row["reason"] for topic, row in dropped.items()} == {
            "refunds": "exact_duplicate", "delivery": "seed_duplicate", "invoices": "near_duplicate",
            "passwords": "similar_meaning"}
        assert dropped["delivery"]["repeats"] == SEEDS[0][0]  # each drop names the text it repeats
        assert {dropped["invoices"]["input"], dropped["invoices"]["repeats"]} == {INVOICE.format(m)
                                                                                 for m in ("March", "April")}
        assert {dropped["passwords"]["input"], dropped["passwords"]["repeats"]} == {
            INPUTS[("passwords", NEW)], INPUTS[("passwords", EXPERT)]}

        asked = app.state.sent[("inputs", "refunds")][-1]["content"]
        assert all(q in asked for q, _ in SEEDS) and "Written by: " in asked and "Difficulty: easy" in asked
        rows = [json.loads(line) for line in (tmp_path / "out" / "labeled.jsonl").read_text().splitlines()]
        assert sorted(r["metadata"]["distill"]["topic"] for r in rows) == ["delivery", "invoices", "passwords",
                                                                            "refunds"]
        keys = {json.loads(line)["key"] for line in (tmp_path / "out" / "inputs.jsonl").read_text().splitlines()}
        for row in rows:
            lineage, text = row["metadata"]["distill"], row["messages"][1]["content"]
            assert row["messages"][0] == {"role": "system", "content": "Triage."}
            assert lineage["kind"] == "generate" and lineage["difficulty"] == "easy" and lineage["variant"] == 0
            assert lineage["persona"] in (NEW, EXPERT) and lineage["input_request_sha256"] in keys
            assert lineage["teacher"] == {"url": url, "model": "big-teacher", "fingerprint": "fp-7"}
            assert len(lineage["template_sha256"]) == 64
            assert lineage["generated_input_sha256"] == hashlib.sha256(text.encode()).hexdigest()
        refund = next(r for r in rows if r["metadata"]["distill"]["topic"] == "refunds")["messages"][1]["content"]
        assert refund in ("How do I get a refund for a broken kettle?", INPUTS[("refunds", EXPERT)])
        shots = [m["content"] for m in app.state.sent[("answers", rows[0]["messages"][1]["content"])]]
        assert shots[:3] == ["Triage.", SEEDS[0][0], SEEDS[0][1]]  # the seeds are the reference examples

        before = Counter(calls)
        again = _generate(config)
        assert calls - before == {"inputs": 2 * 2}  # only the failed requests are asked again
        assert again["diversity"]["counts"] == counts and again["usage"]["cached"] == 4


def test_the_diversity_report_and_the_label_balance_against_the_seeds(tmp_path, seeds):
    app, _ = fake_teacher()
    with serve_app(app) as url:
        summary = _generate(_write_config(tmp_path, url, topics=["refunds", "passwords", "delivery", "invoices"],
                                          count=8, rounds=0))
    diversity = json.loads((tmp_path / "out" / "diversity.json").read_text())
    assert summary["diversity"] == diversity
    # the seeds: 28 words of which 25 differ ("my", "i", "the" repeat), 25 word pairs all different
    assert diversity["seeds"]["distinct_1"] == round(25 / 28, 6) and diversity["seeds"]["distinct_2"] == 1.0
    assert 0.5 < diversity["seeds"]["embedding_spread"] < 1.0 and 0.5 < diversity["inputs"]["embedding_spread"] < 1.0
    # kept: refund -> billing, password -> account, delivery address -> shipping, invoice -> billing
    labels = diversity["labels"]
    assert labels["seeds"] == pytest.approx({"billing": 1 / 3, "shipping": 1 / 3, "technical": 1 / 3})
    assert labels["generated"] == {"account": 0.25, "billing": 0.5, "shipping": 0.25}
    assert labels["total_variation"] == pytest.approx(5 / 12, abs=1e-6)


def test_distinct_n_embedding_spread_and_total_variation_by_hand():
    assert distinct_n(["a b a b", "A, c!"], 1) == 3 / 6  # a b a b a c
    assert distinct_n(["a b a b", "a c"], 2) == 3 / 4  # ab ba ab | ac: pairs do not cross texts
    assert distinct_n(["one"], 2) is None
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert embedding_spread(vectors) == pytest.approx(2 / 3)  # distances 1, 0, 1
    assert embedding_spread(vectors[:1]) is None
    assert total_variation({"a": 0.5, "b": 0.5}, {"a": 1.0}) == 0.5
    assert clean_input(' "Input: where is my parcel?" ') == "where is my parcel?"
    assert clean_input('"Stop" and "go" signs') == '"Stop" and "go" signs'


def test_rounds_ask_for_the_missing_inputs_and_end(tmp_path, seeds):
    app, calls = fake_teacher()
    with serve_app(app) as url:
        two = _generate(_write_config(tmp_path, url, topics=["two"], personas=[NEW], count=3, rounds=2,
                                      out=str(tmp_path / "two")))
        # round 1: variants 1-3 keep 2 (one exact duplicate); round 2 asks for the one missing: variant 4
        assert (two["rounds"], two["diversity"]["counts"]["asked"], two["diversity"]["counts"]["kept"]) == (2, 4, 3)
        same = _generate(_write_config(tmp_path, url, topics=["same"], personas=[NEW], count=3, rounds=2,
                                       out=str(tmp_path / "same")))
    counts = same["diversity"]["counts"]
    assert same["rounds"] == 3 and (counts["asked"], counts["kept"], counts["dropped"]["exact_duplicate"]) == (7, 1, 6)
    assert calls["inputs"] == 4 + 7


def test_the_token_budget_covers_both_steps_and_a_rerun_with_more_finishes(tmp_path, seeds):
    app, calls = fake_teacher()
    with serve_app(app) as url:
        teacher = {"url": url, "model": "big-teacher", "concurrency": 1, "budget_tokens": 30}
        first = _generate(_write_config(tmp_path, url, topics=["refunds", "delivery"], count=4, rounds=3,
                                        teacher=teacher))
        counts = first["diversity"]["counts"]
        assert (counts["asked"], counts["generated"], counts["dropped"]["not_asked"], first["rounds"]) == (4, 2, 2, 1)
        assert (first["prompts"], first["labeled"], first["not_asked"]) == (counts["kept"], 0, counts["kept"])
        assert calls == {"inputs": 2}  # 15 tokens each: the budget of 30 is spent writing inputs
        second = _generate(_write_config(tmp_path, url, topics=["refunds", "delivery"], count=4, rounds=0,
                                         teacher=teacher | {"budget_tokens": 1000}))
    assert second["diversity"]["counts"]["dropped"]["not_asked"] == 0 and second["input_usage"]["cached"] == 2


def test_bad_configs_and_seeds_are_named(tmp_path, seeds):
    bad = _write_config(tmp_path, "http://127.0.0.1:9/v1", count=2, topic=["x"])
    run = CliRunner().invoke(cli, ["distill", "generate", str(bad)])
    assert run.exit_code != 0 and "topic: unknown key; did you mean 'topics'?" in str(run.exception)
    missing = _write_config(tmp_path, "http://127.0.0.1:9/v1", count=2, seeds="nowhere.jsonl")
    run = CliRunner().invoke(cli, ["distill", "generate", str(missing)])
    assert run.exit_code != 0 and "nowhere.jsonl does not exist" in str(run.exception)
    assert "set `seeds:`" in str(run.exception)
    seeds.write_text(seeds.read_text() + json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    run = CliRunner().invoke(cli, ["distill", "generate", str(_write_config(tmp_path, "http://127.0.0.1:9/v1",
                                                                            count=2))])
    assert run.exit_code != 0 and "seeds.jsonl:4: a seed must end with the assistant's answer" in \
        str(run.exception)
    seeds.write_text("not json\n")
    run = CliRunner().invoke(cli, ["distill", "generate", str(_write_config(tmp_path, "http://127.0.0.1:9/v1",
                                                                            count=2))])
    assert run.exit_code != 0 and "seeds.jsonl:1: not JSON" in str(run.exception)
