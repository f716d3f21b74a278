"""LLM-as-judge through any OpenAI-compatible endpoint: 1-5 rubric scores and swap-checked pairwise verdicts.

Every candidate's reply is rated against the same criteria, and every candidate other than the baseline is
compared with it twice, once in each position, so a judge that favours whatever comes first cannot make up
a win. Answers the judge does not give in the asked JSON shape are retried, then counted as failures; a
failure is never scored 0.

The shape is also sent as a JSON Schema (`response_format`), so a server with structured outputs can only answer
in it. An endpoint that turns response_format down (HTTP 400 naming it) is asked again without it, and that client
(one run) gets the plain prompt from then on; the answer is read the same way either way.
"""

from __future__ import annotations

import json
import math
import sys
import time
import weakref
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from statistics import mean
from typing import Any

import openai
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats
from tqdm import tqdm

from hone.eval.endpoint import make_client

DEFAULT_CRITERIA = [
    "correct: agrees with the reference answer",
    "complete: answers everything that was asked",
    "follows the requested format and tone",
]
RETRY_PAUSE_S = 0.5  # first pause after an HTTP or connection error, doubled per retry to give a busy server room
SYSTEM_PROMPT = "You are a strict, impartial judge of AI assistant replies. You answer only with JSON."
RUBRIC_SHAPE = '{"score": <integer 1-5>, "reason": "<one sentence>"}'
PAIRWISE_SHAPE = '{"winner": "A" | "B" | "tie", "reason": "<one sentence>"}'
# The same shapes as JSON Schemas, sent as response_format so a server with structured outputs answers in them; the
# reason is bounded so that a rambling judge still closes its JSON well within max_tokens.
REASON = {"type": "string", "maxLength": 120}  # characters: under 150 tokens at worst
RUBRIC_SCHEMA = {"type": "object", "properties": {"score": {"type": "integer", "enum": [1, 2, 3, 4, 5]},
                                                  "reason": REASON},
                 "required": ["score", "reason"], "additionalProperties": False}
PAIRWISE_SCHEMA = {"type": "object", "properties": {"winner": {"enum": ["A", "B", "tie"]},
                                                    "reason": REASON},
                   "required": ["winner", "reason"], "additionalProperties": False}
RUBRIC_FORMAT = {"type": "json_schema",
                 "json_schema": {"name": "rubric_verdict", "schema": RUBRIC_SCHEMA, "strict": True}}
PAIRWISE_FORMAT = {"type": "json_schema",
                   "json_schema": {"name": "pairwise_verdict", "schema": PAIRWISE_SCHEMA, "strict": True}}
EXCERPT_CHARS = 80
_DECODER = json.JSONDecoder()
_PLAIN_ONLY: weakref.WeakSet = weakref.WeakSet()  # clients whose endpoint refused response_format


class JudgeConfig(BaseModel):
    """Which model judges, where it is served, and what it is asked."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="Base URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1.")
    model: str = Field(description="Name the endpoint serves the judge model under.")
    api_key_env: str | None = Field(
        None, description="Environment variable holding the API key; when None or unset the key 'none' is sent.")
    criteria: list[str] = Field(default_factory=lambda: list(DEFAULT_CRITERIA),
                                description="What a good reply does; shown to the judge as a bullet list.")
    rubric: bool = Field(True, description="Rate every candidate's reply 1-5 against the criteria.")
    pairwise: bool = Field(True, description="Compare every candidate with the baseline, in both orders.")
    retries: int = Field(2, ge=0, description="Extra attempts after an unreadable answer or an HTTP error.")
    timeout_s: float = Field(60, gt=0, description="Seconds to wait for one judge answer.")
    max_tokens: int = Field(300, ge=1, description="Longest judge answer, in tokens.")
    concurrency: int = Field(4, ge=1, description="Judge requests in flight at once.")
    limit: int | None = Field(None, ge=1, description="Judge only the first N examples.")


@dataclass
class JudgeItem:
    """One test example: the conversation so far, the reference reply (if any), and each candidate's reply."""

    prompt: list[dict]
    reference: str | None
    replies: dict[str, str]


class JudgeParseError(ValueError):
    """The judge's answer does not hold the JSON it was asked for."""


@dataclass(frozen=True)
class _Call:
    """One judge request: a rubric rating of a candidate's reply, or one order of its comparison."""

    kind: str  # "rubric" or "pairwise"
    candidate: str
    index: int
    swapped: bool = False  # pairwise only: the baseline is shown as reply A


@dataclass
class _Verdict:
    """What one judge request ended with after its retries."""

    value: int | str | None
    error: str | None
    reached: bool  # False when every attempt failed to connect


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= EXCERPT_CHARS else flat[:EXCERPT_CHARS] + "...")


def _first_json_object(text: str) -> dict | None:
    """The first {...} in `text` that parses as JSON, wherever it sits (inside fences, prose around it)."""
    start = text.find("{")
    while start != -1:
        try:
            return _DECODER.raw_decode(text, start)[0]
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
    return None


def _answer_object(text: str) -> dict:
    answer = _first_json_object(text)
    if answer is None:
        raise JudgeParseError(f"no JSON object in {_excerpt(text)}")
    return answer


def parse_score(text: str) -> int:
    """The integer 1-5 `score` of a rubric answer; raises JudgeParseError when there is none."""
    score = _answer_object(text).get("score")
    if isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 5:
        raise JudgeParseError(f"score must be an integer from 1 to 5, got {score!r}")
    return score


def parse_winner(text: str) -> str:
    """The `winner` of a pairwise answer as A, B or tie (any case); raises JudgeParseError when there is none."""
    winner = _answer_object(text).get("winner")
    choice = {"a": "A", "b": "B", "tie": "tie"}.get(winner.strip().lower()) if isinstance(winner, str) else None
    if choice is None:
        raise JudgeParseError(f'winner must be "A", "B" or "tie", got {winner!r}')
    return choice


def _section(tag: str, text: str) -> str:
    return f"<{tag}>\n{text}\n</{tag}>"


def _conversation(prompt: list[dict]) -> str:
    return "\n\n".join(f"[{turn.get('role', 'user')}]\n{turn.get('content', '')}" for turn in prompt)


def _context(item: JudgeItem, criteria: list[str]) -> list[str]:
    """Criteria, conversation and reference: the parts both kinds of question share."""
    reference = (_section("reference_answer", item.reference) if item.reference is not None
                 else "There is no reference answer; judge correctness yourself.")
    return ["Criteria:\n" + "\n".join(f"- {criterion}" for criterion in criteria),
            _section("conversation", _conversation(item.prompt)), reference]


def _rubric_question(item: JudgeItem, reply: str, criteria: list[str]) -> str:
    return "\n\n".join([
        "Rate the assistant reply to the conversation below from 1 (poor) to 5 (excellent) against the criteria.",
        *_context(item, criteria), _section("reply", reply),
        f"Answer ONLY with JSON of this shape: {RUBRIC_SHAPE}"])


def _pairwise_question(item: JudgeItem, reply_a: str, reply_b: str, criteria: list[str]) -> str:
    return "\n\n".join([
        "Two assistant replies, A and B, answer the conversation below. Which is better against the criteria?",
        *_context(item, criteria), _section("reply_a", reply_a), _section("reply_b", reply_b),
        "Judge the content, not the order or the length of the replies. "
        f"Answer ONLY with JSON of this shape: {PAIRWISE_SHAPE}"])


def _question(call: _Call, item: JudgeItem, baseline: str, criteria: list[str]) -> str:
    if call.kind == "rubric":
        return _rubric_question(item, item.replies[call.candidate], criteria)
    first, second = (baseline, call.candidate) if call.swapped else (call.candidate, baseline)
    return _pairwise_question(item, item.replies[first], item.replies[second], criteria)


def _refuses_format(error: openai.APIStatusError) -> bool:
    """Whether the endpoint turned the request down because it does not take response_format (or that schema)."""
    return error.status_code in (400, 422) and "response_format" in f"{error.message} {error.body}"


def _complete(client: openai.OpenAI, config: JudgeConfig, messages: list[dict], response_format: dict | None) -> str:
    """The judge's answer, asked with `response_format` unless this client's endpoint has refused it before."""
    fields = {"response_format": response_format} if response_format and client not in _PLAIN_ONLY else {}
    try:
        response = client.chat.completions.create(model=config.model, messages=messages, temperature=0,
                                                  max_tokens=config.max_tokens, **fields)
    except openai.APIStatusError as error:
        if not fields or not _refuses_format(error):
            raise
        _PLAIN_ONLY.add(client)  # asked once per client (one run), then the plain prompt alone
        response = client.chat.completions.create(model=config.model, messages=messages, temperature=0,
                                                  max_tokens=config.max_tokens)
    return (response.choices[0].message.content or "") if response.choices else ""


def _api_error(error: openai.APIError) -> str:
    if isinstance(error, openai.APIStatusError):
        return f"HTTP {error.status_code}: {_excerpt(error.message)}"
    return f"API error: {_excerpt(error.message)}"


def _connection_error(error: openai.APIConnectionError, config: JudgeConfig) -> str:
    if isinstance(error, openai.APITimeoutError):
        return f"no answer within {config.timeout_s:g}s"
    return f"cannot connect to {config.url}"


def _next_pause(pause: float) -> float:
    return pause * 2 if pause else RETRY_PAUSE_S


def _ask(client: openai.OpenAI, config: JudgeConfig, question: str, parse: Callable[[str], Any],
         shape: str, response_format: dict | None = None) -> _Verdict:
    """One judge request, retried after an HTTP error, or after an unreadable answer with a reminder of `shape`."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]
    error, reached, pause = "", False, 0.0
    for _ in range(config.retries + 1):
        time.sleep(pause)
        try:
            text = _complete(client, config, messages, response_format)
        except openai.APIConnectionError as exc:
            error, pause = _connection_error(exc, config), _next_pause(pause)
            continue
        except openai.APIError as exc:
            error, reached, pause = _api_error(exc), True, _next_pause(pause)
            continue
        reached, pause = True, 0.0
        try:
            return _Verdict(parse(text), None, reached=True)
        except JudgeParseError as exc:
            error = f"unreadable answer: {exc}"
            reminder = f"I could not read that ({exc}). Answer again with ONLY this JSON and nothing else: {shape}"
            messages = [*messages, {"role": "assistant", "content": text}, {"role": "user", "content": reminder}]
    return _Verdict(None, error, reached)


def _plan(config: JudgeConfig, examples: int, candidates: list[str], baseline: str) -> list[_Call]:
    calls = []
    if config.rubric:
        calls += [_Call("rubric", name, index) for name in candidates for index in range(examples)]
    if config.pairwise:
        calls += [_Call("pairwise", name, index, swapped) for name in candidates if name != baseline
                  for index in range(examples) for swapped in (False, True)]
    return calls


def _run(config: JudgeConfig, items: list[JudgeItem], calls: list[_Call], baseline: str,
         show_progress: bool) -> dict[_Call, _Verdict]:
    """Every call's verdict; stops after the first when the endpoint cannot be reached at all."""
    def ask(call: _Call) -> _Verdict:
        parse, shape, answer_format = ((parse_score, RUBRIC_SHAPE, RUBRIC_FORMAT) if call.kind == "rubric"
                                       else (parse_winner, PAIRWISE_SHAPE, PAIRWISE_FORMAT))
        return _ask(client, config, _question(call, items[call.index], baseline, config.criteria), parse, shape,
                    answer_format)

    with (make_client(config.url, config.api_key_env, config.timeout_s) as client,
          tqdm(total=len(calls), desc=f"judging with {config.model}", unit="call", file=sys.stderr,
               disable=not show_progress) as bar):
        # the first call runs alone so a server that is not running is noticed in seconds, not minutes
        verdicts = {calls[0]: ask(calls[0])}
        bar.update()
        if not verdicts[calls[0]].reached:
            return verdicts
        with ThreadPoolExecutor(max_workers=config.concurrency) as pool:
            futures = {pool.submit(ask, call): call for call in calls[1:]}
            for future in as_completed(futures):
                verdicts[futures[future]] = future.result()
                bar.update()
    return verdicts


def _rubric_summary(verdicts: dict[_Call, _Verdict], candidate: str, examples: int) -> dict:
    results = [verdicts[_Call("rubric", candidate, index)] for index in range(examples)]
    scores = [result.value for result in results]
    scored = [score for score in scores if score is not None]
    failures = [{"index": index, "error": result.error} for index, result in enumerate(results) if result.error]
    return {"mean": round(mean(scored), 3) if scored else None, "scored": len(scored), "failed": len(failures),
            "scores": scores, "failures": failures}


def _order_outcome(winner: str, swapped: bool) -> str:
    """The candidate's result in one order: it is reply A unless the order is swapped."""
    if winner == "tie":
        return "tie"
    return "win" if winner == ("B" if swapped else "A") else "loss"


def _pairwise_summary(verdicts: dict[_Call, _Verdict], candidate: str, baseline: str, examples: int) -> dict:
    outcomes: list[str | None] = []
    failures, flips = [], 0
    for index in range(examples):
        orders = [verdicts[_Call("pairwise", candidate, index, swapped)] for swapped in (False, True)]
        errors = [order.error for order in orders if order.error]
        if errors:
            failures.append({"index": index, "error": "; ".join(errors)})
            outcomes.append(None)
            continue
        first, second = _order_outcome(orders[0].value, False), _order_outcome(orders[1].value, True)
        flips += first != second
        # a verdict counts only if it survives swapping the positions
        outcomes.append(first if first == second else "tie")
    counts = Counter(outcomes)
    judged = counts["win"] + counts["loss"] + counts["tie"]
    return {"against": baseline, "wins": counts["win"], "losses": counts["loss"], "ties": counts["tie"],
            "failed": len(failures), "flips": flips, "flip_rate": round(flips / judged, 4) if judged else None,
            "win_rate": round(counts["win"] / judged, 4) if judged else None, "outcomes": outcomes,
            "failures": failures}


def _spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rho, or None when it is undefined (under 3 points or a constant side)."""
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    rho = float(stats.spearmanr(xs, ys)[0])
    return None if math.isnan(rho) else round(rho, 4)


def _length_bias(items: list[JudgeItem], rubric: dict | None, pairwise: dict | None) -> dict:
    """Does the judge reward length? Score-length correlation, and how often the longer reply wins a pair."""
    lengths, scores = [], []
    for name, summary in (rubric or {}).items():
        for item, score in zip(items, summary["scores"], strict=True):
            if score is not None:
                lengths.append(len(item.replies[name]))
                scores.append(score)
    longer_won = []
    for name, summary in (pairwise or {}).items():
        for item, outcome in zip(items, summary["outcomes"], strict=True):
            own, other = len(item.replies[name]), len(item.replies[summary["against"]])
            if outcome in ("win", "loss") and own != other:
                longer_won.append((outcome == "win") == (own > other))
    return {"rubric_spearman": _spearman(lengths, scores),
            "longer_wins": round(sum(longer_won) / len(longer_won), 4) if longer_won else None}


def _check_inputs(items: list[JudgeItem], candidates: list[str], baseline: str, pairwise: bool) -> None:
    if pairwise and baseline not in candidates:
        raise ValueError(f"baseline {baseline!r} is not one of the candidates {candidates}")
    for index, item in enumerate(items):
        missing = [name for name in candidates if name not in item.replies]
        if missing:
            raise ValueError(f"example {index} has no reply from {', '.join(missing)}")


def _status(verdicts: dict[_Call, _Verdict], config: JudgeConfig) -> tuple[str, str | None]:
    failed = [verdict.error for verdict in verdicts.values() if verdict.error]
    if not failed:
        return "ok", None
    if len(failed) < len(verdicts):
        return "partial", (f"{len(failed)} of {len(verdicts)} judge calls failed after {config.retries} retries; "
                           "those examples are left out of the judge results")
    return "failed", (f"all {len(verdicts)} judge calls failed (last error: {failed[-1]}); check that "
                      f"{config.url} serves {config.model!r} and that it answers in the asked JSON shape")


def _unavailable(config: JudgeConfig, error: str | None) -> dict:
    message = (f"The LLM judge at {config.url} could not be reached ({error}). Start an OpenAI-compatible "
               f"server serving {config.model!r} there (e.g. `vllm serve` or llama.cpp's `llama-server`), or "
               "point the judge url at one that runs; judge scores were skipped.")
    return {"status": "unavailable", "message": message, "model": config.model, "url": config.url,
            "criteria": config.criteria, "examples": 0, "rubric": None, "pairwise": None,
            "length_bias": {"rubric_spearman": None, "longer_wins": None}, "failures": 1}


def judge_candidates(config: JudgeConfig, items: list[JudgeItem], candidates: list[str], baseline: str,
                     show_progress: bool = True) -> dict:
    """Judge every candidate's replies with an LLM: 1-5 rubric scores and pairwise verdicts against `baseline`.

    Returns a JSON-serialisable dict with `status` ("ok", "partial", "failed" when every call failed, or
    "unavailable" when the endpoint cannot be reached, detected on the first call), per-candidate `rubric`
    and `pairwise` summaries (None when switched off), `length_bias`, and the number of failed calls.
    """
    items = items[: config.limit]
    _check_inputs(items, candidates, baseline, config.pairwise)
    calls = _plan(config, len(items), candidates, baseline)
    verdicts = _run(config, items, calls, baseline, show_progress) if calls else {}
    if calls and not verdicts[calls[0]].reached:
        return _unavailable(config, verdicts[calls[0]].error)
    rubric = ({name: _rubric_summary(verdicts, name, len(items)) for name in candidates}
              if config.rubric else None)
    pairwise = ({name: _pairwise_summary(verdicts, name, baseline, len(items))
                 for name in candidates if name != baseline} if config.pairwise else None)
    status, message = _status(verdicts, config)
    return {"status": status, "message": message, "model": config.model, "url": config.url,
            "criteria": config.criteria, "examples": len(items), "rubric": rubric, "pairwise": pairwise,
            "length_bias": _length_bias(items, rubric, pairwise),
            "failures": sum(1 for verdict in verdicts.values() if verdict.error)}


def rate_reply(client: openai.OpenAI, config: JudgeConfig, prompt: list[dict], reply: str,
               reference: str | None = None) -> tuple[int | None, str | None]:
    """One reply's 1-5 rubric score (with the same question and retries as an evaluation), or (None, why not)."""
    item = JudgeItem(prompt, reference, {"reply": reply})
    verdict = _ask(client, config, _rubric_question(item, reply, config.criteria), parse_score, RUBRIC_SHAPE,
                   RUBRIC_FORMAT)
    return verdict.value, verdict.error


def prefer(client: openai.OpenAI, config: JudgeConfig, prompt: list[dict], first: str,
           second: str) -> tuple[str | None, str | None]:
    """Which of two replies the judge prefers, asked in both orders: "first", "second" or "tie" (a tie, or the two
    orders disagree: the judge followed the position, not the content); (None, why) when it gave no verdict."""
    item = JudgeItem(prompt, None, {})
    outcomes = []
    for swapped in (False, True):
        a, b = (second, first) if swapped else (first, second)
        verdict = _ask(client, config, _pairwise_question(item, a, b, config.criteria), parse_winner, PAIRWISE_SHAPE,
                       PAIRWISE_FORMAT)
        if verdict.value is None:
            return None, verdict.error
        outcomes.append({"tie": "tie", "A": "second" if swapped else "first",
                         "B": "first" if swapped else "second"}[verdict.value])
    return (outcomes[0] if outcomes[0] == outcomes[1] else "tie"), None
