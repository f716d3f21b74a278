"""Continuous batching: one background thread decodes every running request together, whatever its adapter.

Each step (1) applies queued control commands (adapter loads/unloads), (2) drops cancelled sequences,
(3) admits waiting requests up to `max_batch` by prefilling them, (4) runs ONE batched decode forward over
all running sequences, each row with its own adapter (`hone.serve.lora_rows`), (5) samples a token per
row, streams the new text to each request's asyncio queue, and retires finished rows at once, so a short
request never waits for a long one.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from hone.models.constrained import Constraint, mask_logits
from hone.models.generation import stop_token_ids
from hone.serve.adapters import AdapterRegistry, AdapterSource, LoadedAdapters
from hone.serve.detokenize import ReplyText
from hone.serve.kv import BatchCache, left_pad

log = logging.getLogger("hone.serve")
PREFILL_TOKEN_BUDGET = 4096  # prompt tokens prefilled per step, so joining requests stall the others briefly
_ids = itertools.count(1)


@dataclass(frozen=True)
class SamplingParams:
    """How one request's tokens are chosen and when its generation ends."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # alternatives reported per token (0: only the chosen one); None: no logprobs


@dataclass(frozen=True)
class TokenLogprobs:
    """A generated token's log probability under the model (before temperature, top_p and constraints), with the
    `top` most likely tokens at its position as (token id, log probability)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class Event:
    """What the engine tells a request: new text, and on the last event why it finished."""

    text: str
    finish_reason: str | None = None  # "stop", "length", "error"
    error: str | None = None
    model_missing: bool = False  # the error is that the request's adapter was unloaded while it waited
    logprobs: list[TokenLogprobs] | None = None  # the tokens generated since the previous event (with logprobs)


@dataclass(eq=False)
class Sequence:
    """One request inside the engine: its prompt, adapter, sampling settings and what it produced."""

    prompt_ids: list[int]
    adapter: str | None
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    id: int = field(default_factory=lambda: next(_ids))
    generated: list[int] = field(default_factory=list)
    reply: ReplyText | None = None  # the reply's text, decoded token by token once the engine admits it
    cancelled: bool = False
    finished: bool = False
    finish_reason: str | None = None
    generator: torch.Generator | None = None
    constraint: Constraint | None = None  # the grammar the reply is held to (response_format, tools)
    pending_logprobs: list[TokenLogprobs] = field(default_factory=list)  # not sent yet: their text is held back

    def send(self, event: Event) -> None:
        """Hand `event` to the request's event loop from the engine thread (with the logprobs not sent yet)."""
        if self.pending_logprobs:
            event.logprobs, self.pending_logprobs = self.pending_logprobs, []
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the request's loop has closed: nobody is listening any more
            self.cancelled = True


@dataclass(frozen=True)
class EngineStats:
    """What the engine is doing: sequences decoding and waiting, steps and tokens so far, adapters in memory."""

    running: int
    waiting: int
    steps: int
    tokens_generated: int
    adapters_loaded: list[str]
    adapter_merged: str | None
    max_batch: int


class Running:
    """The sequences being decoded, row-aligned with their KV cache, next input tokens and positions."""

    def __init__(self):
        self.rows: list[Sequence] = []
        self.cache: BatchCache | None = None
        self.next_tokens: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None

    def add(self, rows: list[Sequence], cache: BatchCache, tokens: torch.Tensor, positions: torch.Tensor) -> None:
        if not self.rows:
            self.rows, self.cache, self.next_tokens, self.positions = rows, cache, tokens, positions
            return
        self.rows = self.rows + rows
        self.cache = self.cache.concat(cache)
        self.next_tokens = torch.cat([self.next_tokens, tokens])
        self.positions = torch.cat([self.positions, positions])

    def keep(self, keep: list[int]) -> None:
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.__init__()
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.next_tokens.device)
        self.rows = [self.rows[i] for i in keep]
        self.cache = self.cache.select(keep)
        self.next_tokens = self.next_tokens.index_select(0, index)
        self.positions = self.positions.index_select(0, index)


class Engine:
    """The background decoding thread and its queue of waiting requests."""

    def __init__(self, model, tokenizer, registry: AdapterRegistry, loaded: LoadedAdapters, max_batch: int,
                 incremental_detokenize: bool = True):
        self.tokenizer = tokenizer
        self.incremental_detokenize = incremental_detokenize
        self.registry = registry
        self.loaded = loaded
        self.max_batch = max_batch
        self.device = next(model.parameters()).device
        self.eos_ids = frozenset(stop_token_ids(tokenizer, getattr(model, "generation_config", None)))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)
        self.running = Running()
        self.waiting: deque[Sequence] = deque()
        self.commands: deque[tuple[Callable[[], object], Future]] = deque()
        self.wake = threading.Condition()
        self.stopping = False
        self.thread: threading.Thread | None = None
        self.unloading: set[str] = set()
        self.steps = 0
        self.tokens_out = 0

    @property
    def model(self):
        return self.loaded.model

    # ---- called from any thread ----

    def start(self) -> None:
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name="hone-engine", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        with self.wake:
            self.stopping = True
            self.wake.notify()
        if self.thread:
            self.thread.join(timeout=30)

    def submit(self, sequence: Sequence) -> None:
        with self.wake:
            self.waiting.append(sequence)
            self.wake.notify()

    def cancel(self, sequence: Sequence) -> None:
        """Mark `sequence` abandoned (client gone, timed out); the engine drops it before its next step."""
        sequence.cancelled = True
        with self.wake:
            self.wake.notify()

    def call(self, command: Callable[[], object]) -> Future:
        """Run `command` on the engine thread between two steps (the only time the model may change)."""
        future: Future = Future()
        with self.wake:
            self.commands.append((command, future))
            self.wake.notify()
        return future

    def load_adapter(self, source: AdapterSource) -> Future:
        """Load `source` into the model now (on the engine thread); the future fails if it does not fit."""
        return self.call(lambda: self.loaded.ensure(source, self._in_use()))

    def unload_adapter(self, name: str) -> Future:
        """Free adapter `name` once no running sequence uses it (already unregistered by the caller)."""
        def retire() -> None:
            self.unloading.add(name)
            self._retire_unloaded()
        return self.call(retire)

    def stats(self) -> EngineStats:
        return EngineStats(running=len(self.running.rows), waiting=len(self.waiting), steps=self.steps,
                           tokens_generated=self.tokens_out, adapters_loaded=self.loaded.names,
                           adapter_merged=self.loaded.merged,
                           max_batch=self.max_batch)

    # ---- engine thread ----

    def _loop(self) -> None:
        while True:
            with self.wake:
                while not (self.stopping or self.commands or self.waiting or self.running.rows):
                    self.wake.wait()
                if self.stopping:
                    break
            try:
                with torch.inference_mode():  # adapter loads too: their weights must be inference tensors as well
                    self._run_commands()
                    self._step()
            except Exception as error:  # one bad step must not take the server down: fail its requests
                log.exception("engine step failed")
                self._fail_all(f"generation failed: {error}")
        self._fail_all("the server is shutting down")

    def _run_commands(self) -> None:
        while self.commands:
            command, future = self.commands.popleft()
            try:
                future.set_result(command())
            except Exception as error:
                future.set_exception(error)

    def _fail_all(self, message: str) -> None:
        for sequence in self.running.rows + list(self.waiting):
            sequence.send(Event("", finish_reason="error", error=message))
        self.running = Running()
        self.waiting.clear()

    def _step(self) -> None:
        self._drop_cancelled()
        self._admit()
        if self.running.rows:
            self._decode()
        if self.unloading:
            self._retire_unloaded()
        self.steps += 1

    def _in_use(self) -> set[str]:
        return {seq.adapter for seq in self.running.rows if seq.adapter}

    def _retire_unloaded(self) -> None:
        """Unload adapters removed from the registry as soon as no running sequence needs them."""
        in_use = self._in_use()
        for name in list(self.unloading):
            if self.registry.get(name) is not None:
                self.unloading.discard(name)  # registered again meanwhile: keep serving it
            elif name not in in_use:
                self.loaded.unload(name)
                self.unloading.discard(name)

    def _drop_cancelled(self) -> None:
        self.running.keep([i for i, seq in enumerate(self.running.rows) if not seq.cancelled])
        with self.wake:
            self.waiting = deque(seq for seq in self.waiting if not seq.cancelled)

    def _adapter_ready(self, sequence: Sequence, in_use: set[str]) -> bool | None:
        """True when its adapter is in memory (or it needs none), False to wait for a free slot, None when
        the adapter was unloaded since the request arrived (the request has then been told)."""
        if sequence.adapter is None:
            return True
        source = self.registry.get(sequence.adapter)
        if source is None:
            sequence.send(Event("", finish_reason="error", model_missing=True,
                                error=f"The model '{sequence.adapter}' was unloaded while the request waited"))
            return None
        return self.loaded.ensure(source, in_use)

    def _admit(self) -> None:
        """Prefill as many waiting requests as fit, in arrival order (skipping those whose adapter has no slot)."""
        room = self.max_batch - len(self.running.rows)
        in_use = self._in_use()
        admitted, deferred, budget = [], deque(), PREFILL_TOKEN_BUDGET
        while self.waiting and len(admitted) < room:
            sequence = self.waiting.popleft()
            if admitted and len(sequence.prompt_ids) > budget:
                deferred.append(sequence)
                break
            try:
                ready = self._adapter_ready(sequence, in_use)
            except Exception as error:  # e.g. the adapter files changed on disk since it was registered
                log.exception("could not load adapter %s", sequence.adapter)
                sequence.send(Event("", finish_reason="error",
                                    error=f"adapter '{sequence.adapter}' could not be loaded: {error}"))
                continue
            if ready is None:
                continue
            if not ready:
                deferred.append(sequence)
                continue
            admitted.append(sequence)
            budget -= len(sequence.prompt_ids)
            if sequence.adapter:
                in_use.add(sequence.adapter)
        with self.wake:
            self.waiting.extendleft(reversed(deferred))
        if admitted:
            try:
                self._prefill(admitted)
            except Exception as error:  # only the joining requests fail; the running batch is untouched
                log.exception("prefill failed")
                for sequence in admitted:
                    sequence.send(Event("", finish_reason="error", error=f"generation failed: {error}"))

    def _forward(self, rows: list[Sequence], **inputs):
        """One forward pass of the shared model, each row with its own adapter (or none)."""
        self.loaded.route([seq.adapter for seq in rows])
        return self.model(**inputs, use_cache=True)

    def _prefill(self, rows: list[Sequence]) -> None:
        input_ids, mask, positions = left_pad([seq.prompt_ids for seq in rows], self.pad_id, self.device)
        cache = DynamicCache()
        out = self._forward(rows, input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache,
                            logits_to_keep=1)
        for seq in rows:
            seq.generator = _generator(seq.params.seed, self.device)
            seq.reply = ReplyText(self.tokenizer, seq.params.stop, self.incremental_detokenize)
        tokens = self._sample(out.logits[:, -1, :], rows)
        self.running.add(rows, BatchCache(out.cache, mask), tokens, positions[:, -1] + 1)
        self._emit(len(self.running.rows) - len(rows), tokens)

    def _decode(self) -> None:
        running = self.running
        mask = running.cache.grow()
        out = self._forward(running.rows, input_ids=running.next_tokens[:, None], attention_mask=mask,
                            position_ids=running.positions[:, None], cache=running.cache.cache)
        running.cache.cache = out.cache
        running.positions = running.positions + 1
        tokens = self._sample(out.logits[:, -1, :], running.rows)
        running.next_tokens = tokens
        self._emit(0, tokens)

    def _sample(self, logits: torch.Tensor, rows: list[Sequence]) -> torch.Tensor:
        """Greedy for temperature 0, else temperature + nucleus sampling with each request's own generator; a row
        with a constraint chooses among the tokens its grammar allows."""
        wanted = [(row, seq) for row, seq in enumerate(rows) if seq.params.logprobs is not None]
        logprobs = torch.log_softmax(logits[[row for row, _ in wanted]].float(), dim=-1) if wanted else None
        constrained = [(row, seq.constraint) for row, seq in enumerate(rows) if seq.constraint is not None]
        if constrained:
            mask_logits(logits, constrained)
        tokens = logits.argmax(dim=-1)
        for row, seq in enumerate(rows):
            if seq.params.temperature > 0:
                tokens[row] = _sample_row(logits[row].float(), seq.params, seq.generator)
        if wanted:
            _record_logprobs(logprobs, tokens, wanted)
        return tokens

    def _emit(self, first_row: int, tokens: torch.Tensor) -> None:
        """Record each row's new token from `first_row` on, stream its text, and retire finished rows."""
        rows = self.running.rows
        for row, token in enumerate(tokens.tolist(), start=first_row):
            self._advance(rows[row], token)
        self.running.keep([i for i, seq in enumerate(rows) if not (seq.finished or seq.cancelled)])

    def _advance(self, seq: Sequence, token: int) -> None:
        params, reply = seq.params, seq.reply
        if token in self.eos_ids and not params.ignore_eos:
            if seq.pending_logprobs and seq.pending_logprobs[-1].token == token:
                seq.pending_logprobs.pop()  # the end of the reply is not one of its tokens
            self._finish(seq, "stop", reply.finish())
            return
        if seq.constraint is not None and not seq.constraint.accept(token):
            log.error("a constrained reply chose a token its grammar forbids: %s", seq.constraint.error)
            seq.send(Event("", finish_reason="error", error="generation failed: the reply left its grammar"))
            seq.finished = True
            return
        seq.generated.append(token)
        self.tokens_out += 1
        text = reply.add(token)
        if seq.constraint is not None and seq.constraint.finished and not reply.stopped:
            self._finish(seq, "stop", text + reply.finish())  # the grammar allows nothing more: end without a step
        elif not reply.stopped and len(seq.generated) >= params.max_tokens:
            text += reply.finish()
            self._finish(seq, "stop" if reply.stopped else "length", text)
        elif reply.stopped:
            self._finish(seq, "stop", text)
        elif text:
            seq.send(Event(text))

    def _finish(self, seq: Sequence, reason: str, text: str) -> None:
        seq.finished, seq.finish_reason = True, reason
        seq.send(Event(text, finish_reason=reason))


def _generator(seed: int | None, device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else time.time_ns() & 0x7FFF_FFFF_FFFF_FFFF)
    return generator


def _record_logprobs(logprobs: torch.Tensor, tokens: torch.Tensor, wanted: list[tuple[int, Sequence]]) -> None:
    """Keep each wanting row's chosen-token log probability and its top alternatives (one host read for all)."""
    most = max(seq.params.logprobs for _, seq in wanted)
    rows = torch.tensor([row for row, _ in wanted], device=tokens.device)
    picked = tokens[rows]
    chosen = logprobs.gather(1, picked[:, None])[:, 0].tolist()
    top_values, top_ids = (logprobs.topk(most, dim=-1) if most else (logprobs[:, :0], logprobs[:, :0].long()))
    top_values, top_ids, picked = top_values.tolist(), top_ids.tolist(), picked.tolist()
    for i, (_, seq) in enumerate(wanted):
        k = seq.params.logprobs
        seq.pending_logprobs.append(TokenLogprobs(picked[i], chosen[i],
                                                  tuple(zip(top_ids[i][:k], top_values[i][:k], strict=True))))


def _sample_row(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> torch.Tensor:
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs > params.top_p  # keep the smallest set reaching p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator)[0]
