"""Every kind of candidate side by side on the tiny model, an external endpoint and a judge served over real
sockets, partial reports when parts fail, the verdict rule, and reference perplexity."""

from __future__ import annotations

import json
import math
import re
import socket
import time
from pathlib import Path

import pytest
import torch
from conftest import serve_app
from fastapi import FastAPI
from pydantic import BaseModel
from test_eval_run import make_run_dir, write_chats

from hone.data.render import render_chat
from hone.eval import evaluate
from hone.eval.config import CandidateConfig, EvalConfig
from hone.eval.stats import paired_bootstrap_ci
from hone.eval.verdict import decide
from hone.models import load_model, load_tokenizer
from hone.models.scoring import example_perplexities

SYSTEM = {"role": "system", "content": "Answer with the ticket category."}
TRAIN = [[SYSTEM, {"role": "user", "content": text}, {"role": "assistant", "content": label}] for text, label in [
    ("my invoice shows a double charge", "billing"), ("the app crashes when I log in", "technical"),
    ("where is my parcel, it is late", "shipping"), ("refund the extra payment on my card", "billing"),
    ("error 500 on the settings page", "technical"), ("the courier left the box at the wrong door", "shipping")]]
TEST = [[SYSTEM, {"role": "user", "content": text}, {"role": "assistant", "content": label}] for text, label in [
    ("I was charged twice on my invoice", "billing"), ("the app crashes after the update", "technical"),
    ("my parcel never arrived", "shipping"), ("billing", "billing")]]
LABELS = ["billing", "technical", "shipping"]


class ChatRequest(BaseModel):
    model: str
    messages: list[dict]
    max_tokens: int | None = None
    temperature: float | None = None


app = FastAPI()


@app.post("/v1/chat/completions")
def chat_completions(request: ChatRequest):
    """"echo" repeats the last user turn; "judge" scores 3 and calls every pair a tie; "babbler" talks."""
    question = request.messages[-1]["content"]
    content = {"echo": question,
               "judge": '{"score": 3, "reason": "ok"}' if "<reply>" in question else '{"winner": "tie"}',
               "babbler": "I think it is fine."}[request.model]
    return {"id": "x", "object": "chat.completion", "created": int(time.time()), "model": request.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": len(content.split()), "total_tokens": 9}}


@pytest.fixture(scope="module")
def server_url():
    with serve_app(app) as url:
        yield url


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory) -> Path:
    return make_run_dir(tiny_model_dir, tmp_path_factory.mktemp("run") / "tiny-run")


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "refunds.md").write_text("Refunds for double charges are issued within five days.\n")
    (docs / "crashes.txt").write_text("If the app crashes, reinstall it and clear the cache.\n")
    return {"train": write_chats(tmp_path / "train.jsonl", TRAIN), "data": write_chats(tmp_path / "test.jsonl", TEST),
            "docs": docs, "out": tmp_path / "out"}


def test_all_candidates_side_by_side_with_endpoint_and_judge(tiny_model_dir, tiny_run, files, server_url):
    candidates = [{"name": "base"}, {"name": "3-shot", "shots": 3}, {"name": "rag", "rag": {"k": 2}},
                  {"name": "rag-docs", "rag": {"k": 1, "source": "docs"}},
                  {"name": "fine-tuned", "adapter": tiny_run}, {"name": "fine-tuned+rag", "adapter": tiny_run,
                                                                "rag": {"k": 2}},
                  {"name": "echo-api", "endpoint": {"url": server_url, "model": "echo"}}]
    report = evaluate(**files, candidates=candidates, max_new_tokens=6, batch_size=4,
                      metrics={"labels": LABELS, "style": {"max_chars": 40}},
                      judge={"url": server_url, "model": "judge"}, forgetting={"limit": 4, "max_new_tokens": 4},
                      show_progress=False)
    names = [c["name"] for c in candidates]
    assert list(report["aggregates"]) == names and set(report["comparisons"]) == set(names) - {"base"}
    assert report["failures"] == {} and not any("echo-api" in w for w in report["warnings"])
    # the random tiny model never names a label, and the report says so instead of showing a silent 0
    assert all(w.startswith("no reply of ") for w in report["warnings"])
    first = report["examples"][0]

    shots = first["outputs"]["3-shot"]["prompt"]
    assert shots[0] == SYSTEM and shots[-1] == TEST[0][1] and len(shots) == 1 + 2 * 3 + 1  # 3 demo pairs
    rag = first["outputs"]["rag"]["prompt"]
    assert rag[-2] == {"role": "assistant", "content": "billing"}  # the nearest example sits before the question
    assert rag[-3]["content"] == "my invoice shows a double charge"
    docs = first["outputs"]["rag-docs"]["prompt"]
    assert docs[0]["role"] == "system" and docs[0]["content"].startswith(SYSTEM["content"])
    assert "[1] (" in docs[0]["content"] and "refunds.md" in docs[0]["content"] and len(docs) == 2
    assert "prompt" not in first["outputs"]["base"] and "prompt" not in first["outputs"]["fine-tuned"]
    timings = report["timings"]
    assert timings["3-shot"]["prompt_tokens_mean"] > timings["rag"]["prompt_tokens_mean"] > timings["base"][
        "prompt_tokens_mean"]

    echo = [e["outputs"]["echo-api"] for e in report["examples"]]
    assert [o["text"] for o in echo] == [chat[1]["content"] for chat in TEST]
    assert [o["scores"]["exact_match"] for o in echo] == [0, 0, 0, 100]
    assert all(o["scores"]["perplexity"] is None for o in echo)  # no token probabilities from an API
    assert all(e["outputs"]["rag"]["scores"]["perplexity"] > 1 for e in report["examples"])
    assert report["aggregates"]["echo-api"]["accuracy"] == 25.0
    assert report["classification"]["echo-api"]["confusion"][0] == [1, 0, 0, 1]  # billing row: 1 right, 1 no label

    judge = report["judge"]
    assert judge["status"] == "ok" and judge["failures"] == 0
    assert all(judge["rubric"][n]["mean"] == 3 for n in names) and report["aggregates"]["rag"]["judge_score"] == 3
    assert all(judge["pairwise"][n]["ties"] == 4 for n in names if n != "base")
    forgetting = report["forgetting"]  # one adapter, so its probes run once for both candidates using it
    assert set(forgetting["models"]) == {"base", "fine-tuned"}
    assert forgetting["measured_as"] == {"fine-tuned": "fine-tuned", "fine-tuned+rag": "fine-tuned"}
    html = Path(report["paths"]["html"]).read_text()
    assert all(f"<th>{name}</th>" in html for name in names) and "confusion matrix" in html


def test_failing_parts_give_a_partial_report_that_says_what_is_missing(tiny_model_dir, files, server_url):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    candidates = [{"name": "base"}, {"name": "down-api", "endpoint": {"url": dead, "model": "m"}}]
    evaluate(base=str(tiny_model_dir), data=files["data"], out=files["out"], candidates=candidates,
                      max_new_tokens=4, metrics={"labels": ["refund", "exchange"]},
                      judge={"url": server_url, "model": "babbler", "retries": 0}, show_progress=False)

    saved = json.loads((files["out"] / "report.json").read_text())
    warnings = "\n".join(saved["warnings"])
    assert f"endpoint {dead} (model m) failed" in warnings
    assert "no reference matches any label of metrics.labels ['refund', 'exchange']" in warnings
    assert "judge: " in warnings and saved["judge"]["status"] == "failed"
    assert saved["judge"]["rubric"]["base"]["failed"] == 4 and saved["judge"]["rubric"]["base"]["mean"] is None
    assert all(value is None for value in saved["aggregates"]["down-api"].values())  # never a silent zero
    assert all(e["outputs"]["down-api"]["text"] is None for e in saved["examples"])
    assert saved["aggregates"]["base"]["token_f1"] is not None
    assert saved["verdict"]["decision"] == "INCOMPLETE"
    assert "warning: " in (files["out"] / "report.html").read_text()


def _report(delta: float, low: float, high: float, metric: str = "exact_match", forgetting: dict | None = None,
            few_shot: float = 10.0) -> dict:
    comparison = {metric: {"delta": delta, "ci_low": low, "ci_high": high, "excludes_zero": low > 0 or high < 0}}
    return {"comparisons": {"fine-tuned": comparison}, "forgetting": forgetting,
            "aggregates": {"base": {metric: 50.0}, "few-shot": {metric: few_shot}, "fine-tuned": {metric: 50 + delta}}}


def _settings(**verdict) -> tuple[EvalConfig, list[CandidateConfig]]:
    settings = EvalConfig(base="m", data="t.jsonl", train="train.jsonl", out="o", verdict=verdict,
                          forgetting={"enabled": False},
                          candidates=[{"name": "base"}, {"name": "few-shot", "shots": 2},
                                      {"name": "fine-tuned", "adapter": "run"}])
    return settings, settings.candidates


def _forgetting(drop: float, rise: float | None = 0.0) -> dict:
    score = {"delta": -drop, "ci_low": -drop - 4, "ci_high": -drop + 4}
    return {"metric": "answer_match", "tolerance": 5.0, "perplexity_tolerance_pct": 25.0,
            "changes": {"fine-tuned": {"answer_match": score, "text_perplexity_rise_pct": rise}}}


@pytest.mark.parametrize(("report", "decision", "reason"), [
    (_report(12, 6, 18, forgetting=_forgetting(1)), "SHIP", "changed -1.0 points (95% CI [-5.0, +3.0]), within"),
    (_report(3, 1, 5, forgetting=_forgetting(0)), "NOT WORTH IT", "under the 5-point threshold"),
    (_report(8, -1, 17, forgetting=_forgetting(0)), "NOT WORTH IT", "includes 0"),
    (_report(-9, -15, -3, forgetting=_forgetting(0)), "REGRESSION", "fell 9.0 points"),
    (_report(12, 6, 18, forgetting=_forgetting(7.5)), "REGRESSION", "answer_match dropped 7.5 points"),
    (_report(12, 6, 18, forgetting=_forgetting(0, rise=40.0)), "REGRESSION", "perplexity rose 40.0%"),
])
def test_verdict_rule(report, decision, reason):
    settings, candidates = _settings()
    verdict = decide(report, settings, candidates)
    assert verdict["decision"] == decision
    assert reason in " ".join(verdict["reasons"])


def test_ship_notes_a_forgetting_interval_that_reaches_past_the_tolerance():
    settings, candidates = _settings()
    verdict = decide(_report(12, 6, 18, forgetting=_forgetting(3)), settings, candidates)  # CI [-7, +1]
    assert verdict["decision"] == "SHIP" and "gained +12.0 points" in verdict["reasons"][0]
    assert "the forgetting CI reaches -7.0, beyond the tolerance" in verdict["notes"][-1]


def test_verdict_notes_cheaper_alternatives_and_can_require_beating_them():
    report = _report(12, 6, 18, few_shot=60.0)  # fine-tuned 62 vs few-shot 60
    settings, candidates = _settings()
    verdict = decide(report, settings, candidates)
    assert verdict["decision"] == "SHIP" and "few-shot (base+2-shot) reaches 60.0" in verdict["notes"][0]
    settings, candidates = _settings(beat_alternatives=True)
    assert decide(report, settings, candidates)["decision"] == "NOT WORTH IT"
    report = _report(12, 6, 18, metric="perplexity")
    settings, candidates = _settings(primary_metric="perplexity")
    assert decide(report, settings, candidates)["decision"] == "REGRESSION"  # perplexity up 12 is worse


def test_reference_perplexity_equals_the_model_loss_on_the_reference(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir), dtype=torch.float32)
    chats = [TEST[0], TEST[1][:2] + [{"role": "assistant", "content": "a much longer reply than the other one"}]]
    examples = [render_chat(tokenizer, chat) for chat in chats]
    batched = example_perplexities(model, examples, tokenizer.pad_token_id, batch_size=2)
    for example, perplexity in zip(examples, batched, strict=True):
        ids = torch.tensor([example.input_ids])
        labels = ids.masked_fill(~torch.tensor([example.trained]), -100)
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels).loss
        assert perplexity == pytest.approx(math.exp(float(loss)), rel=1e-4)


def test_geometric_bootstrap_compares_geometric_means():
    base, tuned = [2.0, 8.0, 4.0, 4.0], [1.0, 4.0, 2.0, 2.0]
    result = paired_bootstrap_ci(base, tuned, geometric=True)
    assert result["delta"] == pytest.approx(2.0 - 4.0)  # geometric means 2 and 4
    assert result["ci_low"] <= result["delta"] <= result["ci_high"] < 0
    assert re.fullmatch(r"-?\d+\.\d+", str(result["ci_low"]))
