"""The teacher: any OpenAI-compatible endpoint (a hone server, vLLM, a frontier API) that answers prompts for the
student's training data.

Requests run `concurrency` at a time. A rate limit (429) waits what Retry-After asks; a timeout, a server error or a
malformed reply is retried with exponential backoff; what still fails is returned as a failure with its reason,
never dropped. Answers are cached by (teacher, sampling, prompt) in the run's folder, so a rerun after an
interruption asks the teacher only for what it has not answered yet. A token budget stops new requests cleanly.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from hone.eval.endpoint import make_client

BACKOFF_S = 0.5  # the first retry's wait; each next one doubles
MAX_BACKOFF_S = 30.0
MAX_RETRY_AFTER_S = 120.0  # a server asking for longer is treated as down for this run


class TeacherSettings(BaseModel):
    """Where the teacher is, how hard to call it, and what its tokens cost."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="OpenAI-compatible base URL, ending in /v1.")
    model: str = Field(description="The model name the endpoint serves.")
    api_key_env: str | None = Field(None, description="Environment variable holding the key (never the key).")
    concurrency: int = Field(4, ge=1, le=256)
    retries: int = Field(4, ge=0, le=20, description="Retries of a failed request before it is counted as failed.")
    timeout_s: float = Field(60.0, gt=0)
    max_tokens: int = Field(512, ge=1)
    temperature: float = Field(0.0, ge=0, le=2)
    budget_tokens: int | None = Field(None, ge=1, description="Stop asking once this many tokens were used.")
    price_input_per_million: float | None = Field(None, ge=0, description="Price of 1M prompt tokens, for the "
                                                  "cost report.")
    price_output_per_million: float | None = Field(None, ge=0)


@dataclass(frozen=True)
class Answer:
    """One teacher reply with what it cost."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    fingerprint: str | None  # the endpoint's system_fingerprint, or the model name it says answered
    answered_at: str  # when the teacher answered (UTC, ISO 8601): an answer from the cache keeps its first time
    cached: bool = False


@dataclass
class Usage:
    """What a run asked of the teacher: requests, retries, tokens, and the cost at the configured prices."""

    requests: int = 0
    retries: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def cost(self, settings: TeacherSettings) -> float | None:
        if settings.price_input_per_million is None and settings.price_output_per_million is None:
            return None
        return (self.prompt_tokens * (settings.price_input_per_million or 0)
                + self.completion_tokens * (settings.price_output_per_million or 0)) / 1e6

    def report(self, settings: TeacherSettings) -> dict:
        return {"requests": self.requests, "retries": self.retries, "cached": self.cached,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "cost": self.cost(settings)}


class BudgetExhausted(Exception):
    """The token budget is used up: no new request is sent."""


class AnswerCache:
    """Answers already given, one JSON line each in `path`, keyed by the hash of teacher, sampling and prompt."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        self.answers: dict[str, dict] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                    self.answers[record["key"]] = record
                except (ValueError, KeyError):
                    continue  # a line cut short by a kill: that prompt is asked again

    def get(self, key: str) -> dict | None:
        return self.answers.get(key)

    def put(self, key: str, record: dict) -> None:
        with self.lock:
            self.answers[key] = record
            with self.path.open("a", encoding="utf-8") as out:
                out.write(json.dumps({"key": key, **record}, ensure_ascii=False) + "\n")


def request_key(settings: TeacherSettings, messages: Sequence[dict], sample: int) -> str:
    """The cache key of one request: the same teacher, sampling and conversation give the same answer."""
    identity = {"url": settings.url, "model": settings.model, "temperature": settings.temperature,
                "max_tokens": settings.max_tokens, "sample": sample, "messages": list(messages)}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class Teacher:
    """Asks the endpoint in `settings`, with retries, a budget and the run's answer cache."""

    def __init__(self, settings: TeacherSettings, cache: AnswerCache, sleep: Callable[[float], None] = time.sleep):
        self.settings = settings
        self.cache = cache
        self.usage = Usage()
        self.sleep = sleep
        self.client = make_client(settings.url, settings.api_key_env, settings.timeout_s)

    def answer(self, messages: Sequence[dict], sample: int = 0) -> Answer | str:
        """The teacher's reply to `messages` (sample `sample` of several), or the reason it failed after retries.
        BudgetExhausted when the token budget is used up before this request."""
        key = request_key(self.settings, messages, sample)
        cached = self.cache.get(key)
        if cached is not None:
            with self.usage.lock:
                self.usage.cached += 1
            return Answer(cached["text"], cached["prompt_tokens"], cached["completion_tokens"], cached["seconds"],
                          cached.get("fingerprint"), cached.get("answered_at", ""), cached=True)
        error = "no attempt was made"
        for attempt in range(self.settings.retries + 1):
            self._check_budget()
            if attempt:
                with self.usage.lock:
                    self.usage.retries += 1
            reply, error, wait = self._ask_once(messages, attempt)
            if reply is not None:
                self.cache.put(key, {"text": reply.text, "prompt_tokens": reply.prompt_tokens,
                                     "completion_tokens": reply.completion_tokens, "seconds": reply.seconds,
                                     "fingerprint": reply.fingerprint, "answered_at": reply.answered_at})
                return reply
            if wait is None:
                break
            if attempt < self.settings.retries:
                self.sleep(wait)
        return error

    def _check_budget(self) -> None:
        budget = self.settings.budget_tokens
        if budget is not None and self.usage.prompt_tokens + self.usage.completion_tokens >= budget:
            raise BudgetExhausted(f"the teacher's token budget of {budget} is used up")

    def _ask_once(self, messages: Sequence[dict], attempt: int) -> tuple[Answer | None, str, float | None]:
        """(reply, "", _) or (None, why it failed, seconds to wait before retrying or None to stop)."""
        import openai

        backoff = min(BACKOFF_S * 2 ** attempt, MAX_BACKOFF_S)
        began = time.perf_counter()
        try:
            response = self.client.chat.completions.create(
                model=self.settings.model, messages=list(messages), max_tokens=self.settings.max_tokens,
                temperature=self.settings.temperature)
        except openai.RateLimitError as error:
            wait = _retry_after(error.response.headers.get("retry-after"), backoff)
            return None, f"rate limited (429): {error.message}", wait if wait <= MAX_RETRY_AFTER_S else None
        except openai.APITimeoutError:
            return None, f"timed out after {self.settings.timeout_s:g} s", backoff
        except openai.APIConnectionError as error:
            return None, f"could not connect: {error.message}", backoff
        except openai.APIStatusError as error:
            retry = error.status_code >= 500 or error.status_code == 408
            return None, f"HTTP {error.status_code}: {error.message}", backoff if retry else None
        except (openai.APIError, ValueError) as error:  # a body that is not the API's JSON
            return None, f"malformed reply: {error}", backoff
        with self.usage.lock:
            self.usage.requests += 1
        text = _reply_text(response)
        if text is None:
            return None, "malformed reply: no message content in choices[0]", backoff
        usage = getattr(response, "usage", None)
        prompt_tokens = getattr(usage, "prompt_tokens", None) or 0
        completion_tokens = getattr(usage, "completion_tokens", None) or len(text.split())
        with self.usage.lock:
            self.usage.prompt_tokens += prompt_tokens
            self.usage.completion_tokens += completion_tokens
        fingerprint = getattr(response, "system_fingerprint", None) or getattr(response, "model", None)
        answered_at = datetime.now(UTC).isoformat(timespec="seconds")
        return Answer(text, prompt_tokens, completion_tokens, time.perf_counter() - began, fingerprint,
                      answered_at), "", None

    def answer_all(self, conversations: Sequence[Sequence[dict]], samples: int = 1,
                   on_done: Callable[[], None] | None = None) -> list[list[Answer | str | None]]:
        """Every conversation's `samples` answers (a failure's reason in place of a failed one, None for those the
        budget left unasked), `concurrency` requests at a time."""
        results: list[list[Answer | str | None]] = [[None] * samples for _ in conversations]
        stopped = threading.Event()

        def one(index: int, sample: int) -> None:
            if stopped.is_set():
                return
            try:
                results[index][sample] = self.answer(conversations[index], sample)
            except BudgetExhausted:
                stopped.set()
            if on_done:
                on_done()

        with ThreadPoolExecutor(self.settings.concurrency) as pool:
            for future in [pool.submit(one, i, s) for i in range(len(conversations)) for s in range(samples)]:
                future.result()
        return results


def _retry_after(header: str | None, fallback: float) -> float:
    try:
        return max(0.0, float(header)) if header is not None else fallback
    except ValueError:
        return fallback


def _reply_text(response) -> str | None:
    try:
        content = response.choices[0].message.content
    except (AttributeError, IndexError, TypeError):
        return None
    return content.strip() if isinstance(content, str) else None
