"""LLM-as-judge against a tiny OpenAI-compatible server; the requested model name picks how that judge behaves."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable, Iterator

import pytest
from conftest import serve_app
from fastapi import FastAPI, Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from scipy import stats

from hone.eval import judge
from hone.eval.judge import (
    PAIRWISE_SHAPE,
    RUBRIC_SHAPE,
    JudgeConfig,
    JudgeItem,
    JudgeParseError,
    judge_candidates,
    parse_score,
    parse_winner,
)

GARBAGE = "Sure! I would give this one a solid five out of five."
REFUSAL = "I can't help with that."


class ChatMessage(BaseModel):
    role: str
    content: str


class ChatRequest(BaseModel):
    model: str
    messages: list[ChatMessage]
    temperature: float | None = None
    max_tokens: int | None = None


REQUESTS: list[dict] = []  # every request the fake judge received, for exact call counts


def _tag(text: str, tag: str) -> str | None:
    match = re.search(rf"<{tag}>\n(.*?)\n</{tag}>", text, re.S)
    return match.group(1) if match else None


def _is_rubric(request: ChatRequest) -> bool:
    return _tag(request.messages[1].content, "reply") is not None


def _fair(request: ChatRequest) -> str:
    """Reply equal to the reference scores 5, else 2; a pair goes to the one reply equal to the reference."""
    question = request.messages[1].content
    reference = _tag(question, "reference_answer")
    if _is_rubric(request):
        return json.dumps({"score": 5 if _tag(question, "reply") == reference else 2, "reason": "vs reference"})
    a_right, b_right = (_tag(question, tag) == reference for tag in ("reply_a", "reply_b"))
    winner = "A" if a_right and not b_right else "B" if b_right and not a_right else "tie"
    return json.dumps({"winner": winner, "reason": "vs reference"})


def _chatty_fair(request: ChatRequest) -> str:
    return f"Here is my verdict:\n```json\n{_fair(request)}\n```\nHope this helps!"


def _longer(request: ChatRequest) -> str:
    """Score grows with length; a pair goes to the longer reply."""
    question = request.messages[1].content
    if _is_rubric(request):
        return json.dumps({"score": min(5, 1 + len(_tag(question, "reply")) // 5), "reason": "long is good"})
    a, b = len(_tag(question, "reply_a")), len(_tag(question, "reply_b"))
    return json.dumps({"winner": "A" if a > b else "B" if b > a else "tie", "reason": "long is good"})


JUDGES: dict[str, Callable[[ChatRequest], str | None]] = {
    "fair": _chatty_fair,
    "flaky": lambda request: _fair(request) if len(request.messages) > 2 else GARBAGE,
    "refuser": lambda request: REFUSAL,
    "broken": lambda request: None,
    "biased": lambda request: _fair(request) if _is_rubric(request) else '{"winner": "A", "reason": "first"}',
    "longer": _longer,
    "shy": lambda request: GARBAGE if _tag(request.messages[1].content, "reply_a") == "Paris" else _fair(request),
}

app = FastAPI()


@app.post("/v1/chat/completions")
def chat_completions(request: ChatRequest, authorization: str | None = Header(None)):
    REQUESTS.append({"model": request.model, "messages": request.messages, "temperature": request.temperature,
                     "authorization": authorization})
    content = JUDGES[request.model](request)
    if content is None:
        return JSONResponse(status_code=500, content={"error": {"message": "judge crashed", "type": "server_error",
                                                                "param": None, "code": None}})
    return {"id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": request.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


@pytest.fixture(scope="module")
def judge_url() -> Iterator[str]:
    """Base URL of the fake judge, served over a real socket for this module."""
    with serve_app(app) as base_url:
        yield base_url


@pytest.fixture
def url(judge_url, monkeypatch) -> str:
    """The fake judge with an empty request log, and no pause between retries."""
    REQUESTS.clear()
    monkeypatch.setattr(judge, "RETRY_PAUSE_S", 0.0)
    return judge_url


def _item(question: str, reference: str, base: str, tuned: str) -> JudgeItem:
    return JudgeItem([{"role": "user", "content": question}], reference, {"base": base, "tuned": tuned})


# tuned is right on 0 and 1, both are right on 2, only base is right on 3
ITEMS = [_item("Capital of France?", "Paris", "London", "Paris"), _item("2 + 2?", "4", "5", "4"),
         _item("Colour of the sky?", "blue", "blue", "blue"), _item("Is water wet?", "yes", "yes", "no")]
CANDIDATES = ["base", "tuned"]


def _judge(url: str, model: str, items: list[JudgeItem] = ITEMS, **options) -> dict:
    result = judge_candidates(JudgeConfig(url=url, model=model, **options), items, CANDIDATES, "base",
                              show_progress=False)
    json.dumps(result)  # the report writes it as JSON
    return result


def test_fair_judge_scores_compares_and_reports_length_bias(url, capsys):
    result = judge_candidates(JudgeConfig(url=url, model="fair"), ITEMS, CANDIDATES, "base")
    assert (result["status"], result["message"], result["examples"], result["failures"]) == ("ok", None, 4, 0)
    assert result["rubric"]["base"] == {"mean": 3.5, "scored": 4, "failed": 0, "scores": [2, 2, 5, 5],
                                        "failures": []}
    assert result["rubric"]["tuned"]["scores"] == [5, 5, 5, 2] and result["rubric"]["tuned"]["mean"] == 4.25
    assert list(result["pairwise"]) == ["tuned"]
    assert result["pairwise"]["tuned"] == {"against": "base", "wins": 2, "losses": 1, "ties": 1, "failed": 0,
                                           "flips": 0, "flip_rate": 0.0, "win_rate": 0.5,
                                           "outcomes": ["win", "win", "tie", "loss"], "failures": []}
    # decided pairs with different lengths: "Paris" beat the longer "London", the longer "yes" beat "no"
    assert result["length_bias"]["longer_wins"] == 0.5
    lengths = [6, 1, 4, 3, 5, 1, 4, 2]
    scores = result["rubric"]["base"]["scores"] + result["rubric"]["tuned"]["scores"]
    assert result["length_bias"]["rubric_spearman"] == pytest.approx(stats.spearmanr(lengths, scores)[0], abs=1e-4)
    assert len(REQUESTS) == 8 + 8
    assert all(r["temperature"] == 0 and r["authorization"] == "Bearer none" for r in REQUESTS)
    assert "judging with fair" in capsys.readouterr().err


def test_limit_switches_and_api_key_from_the_environment(url, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sk-secret")
    result = _judge(url, "fair", limit=2, rubric=False, api_key_env="JUDGE_KEY")
    assert result["examples"] == 2 and result["rubric"] is None
    assert result["pairwise"]["tuned"]["outcomes"] == ["win", "win"]
    assert len(REQUESTS) == 4 and {r["authorization"] for r in REQUESTS} == {"Bearer sk-secret"}
    assert _judge(url, "fair", pairwise=False)["pairwise"] is None


def test_unreadable_first_answer_is_retried_with_a_reminder(url):
    result = _judge(url, "flaky")
    assert (result["status"], result["failures"]) == ("ok", 0)
    assert result["rubric"]["tuned"]["scores"] == [5, 5, 5, 2]
    assert result["pairwise"]["tuned"]["outcomes"] == ["win", "win", "tie", "loss"]
    assert len(REQUESTS) == 2 * 16
    reminders = [r["messages"][-1].content for r in REQUESTS if len(r["messages"]) > 2]
    assert len(reminders) == 16 and all(r["messages"][2].content == GARBAGE for r in REQUESTS if len(r["messages"]) > 2)
    assert sum(RUBRIC_SHAPE in text for text in reminders) == 8
    assert sum(PAIRWISE_SHAPE in text for text in reminders) == 8


def _assert_everything_failed(result: dict, error: str) -> None:
    assert result["status"] == "failed" and result["message"] and result["failures"] == 16
    for summary in result["rubric"].values():
        assert (summary["mean"], summary["scored"], summary["failed"]) == (None, 0, 4)
        assert summary["scores"] == [None] * 4
        assert [f["index"] for f in summary["failures"]] == [0, 1, 2, 3]
        assert all(error in f["error"] for f in summary["failures"])
    pairs = result["pairwise"]["tuned"]
    assert (pairs["wins"], pairs["losses"], pairs["ties"], pairs["failed"]) == (0, 0, 0, 4)
    assert (pairs["flip_rate"], pairs["win_rate"], pairs["outcomes"]) == (None, None, [None] * 4)
    assert result["length_bias"] == {"rubric_spearman": None, "longer_wins": None}


def test_refusals_are_counted_as_failures_never_as_scores(url):
    _assert_everything_failed(_judge(url, "refuser"), "unreadable answer")
    assert len(REQUESTS) == 16 * 3


def test_http_errors_are_retried_then_counted(url):
    _assert_everything_failed(_judge(url, "broken", retries=1), "HTTP 500")
    assert len(REQUESTS) == 16 * 2


def test_position_biased_judge_wins_nothing_and_flips_every_pair(url):
    result = _judge(url, "biased")
    pairs = result["pairwise"]["tuned"]
    assert (pairs["wins"], pairs["losses"], pairs["ties"], pairs["flips"]) == (0, 0, 4, 4)
    assert (pairs["flip_rate"], pairs["win_rate"]) == (1.0, 0.0)
    assert result["rubric"]["tuned"]["mean"] == 4.25 and result["status"] == "ok"


def test_length_loving_judge_is_flagged(url):
    items = [_item("q0", "r0", "short", "a much longer reply"), _item("q1", "r1", "a long detailed answer", "no"),
             _item("q2", "r2", "same", "size")]
    result = _judge(url, "longer", items)
    assert result["pairwise"]["tuned"]["outcomes"] == ["win", "loss", "tie"]
    assert result["length_bias"]["longer_wins"] == 1.0
    lengths = [len(item.replies[name]) for name in CANDIDATES for item in items]
    scores = result["rubric"]["base"]["scores"] + result["rubric"]["tuned"]["scores"]
    assert scores == [2, 5, 1, 4, 1, 1]
    assert result["length_bias"]["rubric_spearman"] == pytest.approx(stats.spearmanr(lengths, scores)[0], abs=1e-4)
    assert result["length_bias"]["rubric_spearman"] > 0.9


def test_one_failed_order_fails_the_pair_and_the_run_is_partial(url):
    result = _judge(url, "shy")
    pairs = result["pairwise"]["tuned"]
    assert pairs["outcomes"] == [None, "win", "tie", "loss"]
    assert (pairs["wins"], pairs["losses"], pairs["ties"], pairs["failed"]) == (1, 1, 1, 1)
    assert [f["index"] for f in pairs["failures"]] == [0]
    assert (result["status"], result["failures"]) == ("partial", 1) and "1 of 16" in result["message"]
    assert result["rubric"]["base"]["mean"] == 3.5
    assert len(REQUESTS) == 15 + 3


def test_constant_scores_give_no_length_correlation(url):
    items = [_item(f"q{i}", answer, answer, answer) for i, answer in enumerate(["a", "bb", "ccc"])]
    result = _judge(url, "fair", items)
    assert result["rubric"]["tuned"]["scores"] == [5, 5, 5]
    assert result["length_bias"] == {"rubric_spearman": None, "longer_wins": None}


def test_unreachable_endpoint_is_reported_in_seconds():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    began = time.monotonic()
    result = judge_candidates(JudgeConfig(url=dead_url, model="fair"), ITEMS * 10, CANDIDATES, "base",
                              show_progress=False)
    assert time.monotonic() - began < 10
    assert result["status"] == "unavailable" and dead_url in result["message"]
    assert (result["rubric"], result["pairwise"], result["examples"]) == (None, None, 0)


def test_inputs_are_checked():
    config = JudgeConfig(url="http://127.0.0.1:1/v1", model="m")
    with pytest.raises(ValueError, match="baseline 'gpt'"):
        judge_candidates(config, ITEMS, CANDIDATES, "gpt", show_progress=False)
    with pytest.raises(ValueError, match="example 0 has no reply from rag"):
        judge_candidates(config, ITEMS, [*CANDIDATES, "rag"], "base", show_progress=False)
    with pytest.raises(ValidationError, match="extra"):
        JudgeConfig(url="http://x/v1", model="m", temprature=0)
    assert config.criteria == judge.DEFAULT_CRITERIA and config.retries == 2


@pytest.mark.parametrize("text, score", [
    ('```json\n{"score": 4, "reason": "fine"}\n```', 4),
    ('My rating is {"score": 2, "reason": "wrong"} as shown.', 2),
    ('{not json} then {"score": 5, "reason": "{braces} inside"}', 5),
])
def test_parse_score_finds_the_json(text, score):
    assert parse_score(text) == score


@pytest.mark.parametrize("text", ['{"score": 0}', '{"score": 6}', '{"score": "five"}', '{"reason": "x"}',
                                  '{"score": 4.5}', '{"score": true}', REFUSAL, ""])
def test_parse_score_rejects_anything_but_an_integer_1_to_5(text):
    with pytest.raises(JudgeParseError):
        parse_score(text)


def test_parse_winner():
    assert parse_winner('Verdict: ```json\n{"winner": "b", "reason": "x"}\n```') == "B"
    assert parse_winner('{"winner": "Tie"}') == "tie"
    for text in ('{"winner": "C"}', '{"winner": 1}', REFUSAL):
        with pytest.raises(JudgeParseError):
            parse_winner(text)
