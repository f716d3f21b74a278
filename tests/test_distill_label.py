"""`hone distill label` against teachers over real sockets: a fake OpenAI-compatible server that answers some
requests with 429 (Retry-After), a timeout, a malformed body or a 500 before answering, and one prompt it never
answers; and a real `hone serve` on the tiny model. Every answer keeps its lineage, failures are listed with their
reason, the token budget stops cleanly, and a rerun asks the teacher nothing it already answered."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import serve_app
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from typer.testing import CliRunner

from hone.cli import app as cli
from hone.data.validate import validate_file
from hone.distill.label import LabelConfig, label, majority
from hone.distill.teacher import Answer, TeacherSettings
from hone.errors import HoneError

NEVER = "never answered"


def fake_teacher() -> tuple[FastAPI, Counter]:
    """An OpenAI-compatible chat endpoint that misbehaves once per kind of prompt, then answers."""
    app, calls = FastAPI(), Counter()
    app.state.sent = sent = {}  # the last conversation sent for each prompt
    lock = threading.Lock()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        with lock:
            calls[prompt] += 1
            seen = calls[prompt]
            sent[prompt] = body["messages"]
        if NEVER in prompt:
            return JSONResponse({"error": {"message": "overloaded", "type": "server_error"}}, status_code=500)
        if "rate" in prompt and seen == 1:
            return JSONResponse({"error": {"message": "slow down", "type": "rate_limit_error"}}, status_code=429,
                                headers={"Retry-After": "0"})
        if "slow" in prompt and seen == 1:
            await asyncio.sleep(4)  # past the client's timeout
        if "garbage" in prompt and seen == 1:
            return PlainTextResponse("<html>not json</html>", media_type="application/json")
        if "empty" in prompt and seen == 1:
            return JSONResponse({"id": "x", "object": "chat.completion", "created": 0, "model": "big", "choices": []})
        answer = f"label for: {prompt}"
        if "ticket" in prompt:  # answers as JSON, the second sample of "vary" breaks the schema
            answer = '{"category": "billing"}' if not ("vary" in prompt and seen % 2 == 0) else "billing, I think"
            answer = '{"category": "boom"}' if "boom" in prompt else '{"category": "gossip"}' if "off" in prompt \
                else answer
        return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "big-teacher",
                "system_fingerprint": "fp-42",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}

    return app, calls


PROMPTS = ["a plain question", "a rate limited question", "a slow question", "a garbage question",
           "an empty question", f"a {NEVER} question"]


def _config(url: str, out: Path, prompts: Path, **teacher) -> LabelConfig:
    settings = {"url": url, "model": "big-teacher", "concurrency": 3, "retries": 3, "timeout_s": 2.0,
                "price_input_per_million": 2.0, "price_output_per_million": 8.0} | teacher
    return LabelConfig(teacher=TeacherSettings(**settings), prompts=prompts, system="Label the ticket.", out=out)


@pytest.fixture
def prompts(tmp_path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": p}]}) + "\n" for p in PROMPTS))
    return path


def test_retries_through_429_timeouts_and_garbage_list_what_failed_and_resume_without_asking_again(
        tmp_path, prompts, monkeypatch, tiny_model_dir):
    monkeypatch.setattr("hone.distill.teacher.BACKOFF_S", 0.01)
    app, calls = fake_teacher()
    with serve_app(app) as url:
        out = tmp_path / "labels"
        summary = label(_config(url, out, prompts), show_progress=False)
        assert (summary["prompts"], summary["labeled"], summary["failed"], summary["complete"]) == (6, 5, 1, False)
        failed = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
        assert failed[0]["messages"][-1]["content"] == PROMPTS[-1] and "HTTP 500" in failed[0]["errors"][0]
        assert calls[PROMPTS[-1]] == 4  # the first try and 3 retries
        assert {p: calls[p] for p in PROMPTS[:5]} == {p: 1 if p == PROMPTS[0] else 2 for p in PROMPTS[:5]}
        assert summary["usage"]["retries"] == 4 + 3 and summary["usage"]["prompt_tokens"] == 50
        assert summary["usage"]["cost"] == pytest.approx((50 * 2.0 + 25 * 8.0) / 1e6)

        rows = [json.loads(line) for line in (out / "labeled.jsonl").read_text().splitlines()]
        assert [r["messages"][-1]["content"] for r in rows] == [f"label for: {p}" for p in PROMPTS[:5]]
        assert all(r["messages"][0] == {"role": "system", "content": "Label the ticket."} for r in rows)
        lineage = rows[0]["metadata"]["distill"]
        assert lineage["teacher"] == {"url": url, "model": "big-teacher", "fingerprint": "fp-42"}
        assert len(lineage["template_sha256"]) == 64 and lineage["agreement"] == 1.0
        assert validate_file(out / "labeled.jsonl", model=str(tiny_model_dir)).ok  # hone trains on it as it is

        before = sum(calls.values())
        again = label(_config(url, out, prompts), show_progress=False)  # a rerun: only the failure is asked again
        assert sum(calls.values()) - before == 4 and again["usage"]["cached"] == 5 and again["labeled"] == 5


def test_the_token_budget_stops_cleanly_and_a_bigger_one_finishes_the_run(tmp_path):
    prompts = tmp_path / "plain.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(5)))
    app, calls = fake_teacher()
    with serve_app(app) as url:
        out = tmp_path / "labels"
        first = label(_config(url, out, prompts, concurrency=1, budget_tokens=30), show_progress=False)
        assert (first["labeled"], first["failed"], first["not_asked"], first["complete"]) == (2, 0, 3, False)
        assert sum(calls.values()) == 2  # 15 tokens each: the budget of 30 stops the third request
        second = label(_config(url, out, prompts, concurrency=1), show_progress=False)
        assert (second["labeled"], second["usage"]["cached"], sum(calls.values())) == (5, 2, 5)


def test_reference_examples_go_to_the_teacher_but_not_into_the_students_data(tmp_path, prompts):
    shots = tmp_path / "shots.jsonl"
    shots.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant",
                                                                                  "content": "a"}]}) + "\n")
    app, _ = fake_teacher()
    with serve_app(app) as url:
        config = _config(url, tmp_path / "out", prompts).model_copy(update={"examples": shots})
        label(config, show_progress=False)
    assert [m["content"] for m in app.state.sent[PROMPTS[0]]] == ["Label the ticket.", "q", "a", PROMPTS[0]]
    first = json.loads((tmp_path / "out" / "labeled.jsonl").read_text().splitlines()[0])
    assert [m["content"] for m in first["messages"][:2]] == ["Label the ticket.", PROMPTS[0]]
    shots.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}]}) + "\n")
    with pytest.raises(HoneError, match="must end with the assistant's answer"):
        label(config, show_progress=False)


def test_self_consistency_keeps_the_most_common_answer_and_its_agreement():
    answers = [Answer(text, 1, 1, 0.1, None, "") for text in ("billing", "Billing ", "shipping")]
    winner, agreement = majority(answers)
    assert winner.text == "billing" and agreement == pytest.approx(2 / 3)


def test_a_real_hone_server_labels_through_the_command_line_and_its_empty_answers_are_never_kept(
        tmp_path, tiny_model_dir):
    from hone.api.app import create_app
    from hone.serve.config import ServeConfig

    # the random tiny model's greedy replies are empty: a teacher that says nothing must teach nothing
    config = ServeConfig(base=str(tiny_model_dir), base_id="tiny", dtype="fp32", threads=1,
                         database=f"sqlite:///{tmp_path / 'teacher.db'}", jobs={"worker": False})
    (tmp_path / "prompts.csv").write_text("id,text\n1,where is my order?\n2,my kettle broke\n")
    with serve_app(create_app(config)) as url:
        (tmp_path / "label.yaml").write_text(yaml.safe_dump({
            "teacher": {"url": url, "model": "tiny", "max_tokens": 4, "concurrency": 2},
            "prompts": "prompts.csv", "column": "text", "samples": 2, "out": str(tmp_path / "out")}))
        run = CliRunner().invoke(cli, ["distill", "label", str(tmp_path / "label.yaml"), "--json"])
    assert run.exit_code == 0, run.output
    summary = json.loads(run.output)
    assert summary["usage"]["requests"] == 4  # two samples of each prompt, over a real socket
    assert (summary["labeled"], summary["rejected"], summary["rejections"]) == (0, 2, {"empty": 4})
    rejected = [json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    assert rejected[1]["messages"] == [{"role": "user", "content": "my kettle broke"}]
    assert rejected[1]["answers"] == [{"text": "", "reasons": ["empty: the answer is empty"]}] * 2


def test_bad_config_and_prompts_are_named(tmp_path):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"teacher": {"url": "http://x/v1", "model": "m", "temprature": 1},
                                                       "prompts": "p.jsonl", "out": "o"}))
    run = CliRunner().invoke(cli, ["distill", "label", str(tmp_path / "bad.yaml")])
    assert run.exit_code != 0 and "temprature" in str(run.exception)
    (tmp_path / "p.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n')
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump({"teacher": {"url": "http://127.0.0.1:9/v1", "model": "m"},
                                                      "prompts": "p.jsonl", "out": str(tmp_path / "o")}))
    run = CliRunner().invoke(cli, ["distill", "label", str(tmp_path / "ok.yaml")])
    assert run.exit_code != 0 and "p.jsonl:2: not JSON" in str(run.exception)


def test_captured_traffic_is_labeled_as_it_was_stored_with_pii_masked(tmp_path, tiny_model_dir):
    import httpx

    from hone.api.app import create_app
    from hone.serve.config import ServeConfig

    db = f"sqlite:///{tmp_path / 'served.db'}"
    served = ServeConfig(base=str(tiny_model_dir), base_id="tiny", dtype="fp32", threads=1, database=db,
                         models={"tiny": {"capture": True}}, jobs={"worker": False})
    with serve_app(create_app(served)) as url:
        for text in ("refund please, mail jane.doe@example.com", "where is order 7?"):
            httpx.post(f"{url}/chat/completions", json={"model": "tiny", "max_tokens": 2, "messages": [
                {"role": "system", "content": "be brief"}, {"role": "user", "content": text}]}).raise_for_status()
    app, calls = fake_teacher()
    with serve_app(app) as teacher:
        config = LabelConfig(teacher=TeacherSettings(url=teacher, model="big-teacher"), system="Triage.",
                             traffic={"model": "tiny", "database": db}, out=tmp_path / "out")
        summary = label(config, show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / "out" / "labeled.jsonl").read_text().splitlines()]
    assert summary["labeled"] == 2 and [r["messages"][0]["content"] for r in rows] == ["Triage.", "Triage."]
    asked = " ".join(calls)
    assert "jane.doe@example.com" not in asked and "where is order 7?" in asked and "be brief" not in asked
    with pytest.raises(ValueError, match="exactly one of"):
        LabelConfig(teacher=TeacherSettings(url=teacher, model="m"), out=tmp_path / "o")


def test_filters_reject_with_reasons_keep_going_when_a_check_raises_and_pair_rejected_with_accepted(
        tmp_path, tiny_model_dir):
    (tmp_path / "ticket.schema.json").write_text(json.dumps(
        {"type": "object", "required": ["category"], "properties": {"category": {"type": "string"}}}))
    (tmp_path / "checks.py").write_text(
        "def no_boom(answer, messages):\n"
        "    if 'boom' in answer:\n"
        "        raise RuntimeError('exploded on ' + messages[-1]['content'])\n"
        "    return True\n")
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in (
        "ticket one", "ticket vary", "ticket off topic", "ticket boom")))
    app, _ = fake_teacher()
    with serve_app(app) as url:
        (tmp_path / "label.yaml").write_text(yaml.safe_dump({
            "teacher": {"url": url, "model": "big-teacher", "concurrency": 1}, "prompts": "prompts.jsonl",
            "samples": 2, "out": str(tmp_path / "out"),
            "filters": {"json_schema": "ticket.schema.json", "labels": ["billing", "shipping", "boom"],
                        "label_field": "category", "function": "checks.py:no_boom"}}))
        run = CliRunner().invoke(cli, ["distill", "label", str(tmp_path / "label.yaml"), "--json"])
    assert run.exit_code == 0, run.output
    summary = json.loads(run.output)
    assert (summary["labeled"], summary["rejected"], summary["pairs"]) == (2, 2, 1)
    out = tmp_path / "out"
    rejected = {row["messages"][-1]["content"]: row["answers"][0]["reasons"]
                for row in map(json.loads, (out / "rejected.jsonl").read_text().splitlines())}
    assert rejected["ticket off topic"] == ["labels: label 'gossip' is not one of billing, shipping, boom"]
    assert rejected["ticket boom"] == ["function:no_boom: the check raised RuntimeError: exploded on ticket boom"]
    pair = json.loads((out / "pairs.jsonl").read_text())
    assert pair["preferred_output"][0]["content"] == '{"category": "billing"}'
    assert pair["non_preferred_output"][0]["content"] == "billing, I think"
    assert pair["input"]["messages"] == [{"role": "user", "content": "ticket vary"}]
    pairs = validate_file(out / "pairs.jsonl", model=str(tiny_model_dir))
    assert pairs.format == "dpo" and pairs.ok  # ready for a DPO job
    labeled = [json.loads(line) for line in (out / "labeled.jsonl").read_text().splitlines()]
    assert labeled[1]["metadata"]["distill"]["rejected_samples"] == 1
    assert labeled[1]["metadata"]["distill"]["agreement"] == 0.5  # one of the two samples broke the schema
    assert labeled[1]["metadata"]["distill"]["filters"]["passed"] == ["empty", "labels", "json_schema",
                                                                      "function:no_boom"]
    assert summary["rejections"] == {"labels": 3, "json_schema": 1, "function:no_boom": 2}
