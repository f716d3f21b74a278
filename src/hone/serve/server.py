"""What one `hone serve` process runs: a base model and its adapters decoded together by the engine, the
retrieval indexes requests draw passages from, traffic capture and the concurrency limit.

The HTTP layer (`hone.api`) calls this; nothing here imports it. A refused request raises a `RequestError`
(`hone.errors`, `hone.serve.errors`) naming the request field at fault.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from hone import audit
from hone.data.render import render_prompt, writes_default_tool_calls
from hone.errors import HoneError, NotFoundError, RequestError
from hone.models import fingerprint, frozen_dtype, load_model, load_tokenizer, local_model_dir, resolve_device
from hone.models.constrained import Constraint, OutputGrammar, grammar_tokenizer
from hone.monitor.canary import Canaries
from hone.monitor.capture import CaptureStore, Served
from hone.registry.promotion import Promotions
from hone.registry.versions import Registry
from hone.retrieval.prompt import rag_messages, rag_text, retrieval_query
from hone.serve.adapters import (
    AdapterRegistry,
    AdapterSource,
    LoadedAdapters,
    OtherBase,
    resolve_adapter,
    resolve_request_adapter,
)
from hone.serve.config import MODEL_NAME, ServeConfig
from hone.serve.engine import Engine, Event, SamplingParams, Sequence, TokenLogprobs
from hone.serve.errors import GenerationFailed, GenerationTimeout
from hone.serve.limits import ConcurrencyLimit
from hone.store import engine_for, session
from hone.store.tables import DEFAULT_PROJECT

log = logging.getLogger("hone.serve")
DISCONNECT_POLL_S = 0.5  # how often a request waiting for tokens checks that its client is still there


@dataclass(frozen=True)
class Prompt:
    """What the model is fed for one request: the token ids, and the retrieved passages they include."""

    ids: list[int]
    passages: list[dict]


@dataclass(frozen=True)
class Route:
    """What answers one request: the engine's adapter (None: the base), the registered version or adapter that is
    (None: the base), the alias the request named, and the arm of the alias's traffic split. Under an active split,
    `split` is its id (the exchange is captured for the comparison), and a shadow split names the challenger version
    and adapter that also answer a copy of the request in the background."""

    adapter: str | None
    version: str | None
    alias: str | None = None
    arm: str | None = None
    split: str | None = None
    shadow: str | None = None
    shadow_adapter: str | None = None


@dataclass(frozen=True)
class ServedModel:
    """A model clients can name: the base (no parent) or an adapter on it; `root` is the model's own name."""

    id: str
    root: str
    parent: str | None
    owned_by: str = "hone"
    created: int | None = None


class ModelServer:
    """The model and engine, adapters, capture, indexes and limits of one serving process."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.base_id = config.served_base
        device = resolve_device(config.device, "device")
        if config.threads:
            torch.set_num_threads(config.threads)
        self.base_dir = local_model_dir(config.base)
        self._base_fingerprint: str | None = None
        model = load_model(config.base, dtype=frozen_dtype(device, config.dtype), device=device).eval()
        self.tokenizer = load_tokenizer(config.base)
        self.context_length = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.registry = AdapterRegistry()
        for name, path in config.adapters.items():
            try:
                self.registry.add(resolve_adapter(name, path, config.base, self.base_dir,
                                                   lambda: self.base_fingerprint))
            except HoneError as error:
                raise HoneError(f"adapters.{name}: {error.message}", hint=error.hint) from None
        loaded = LoadedAdapters(model, config.base, config.max_adapters, config.merge_single_adapter)
        self.engine = Engine(model, self.tokenizer, self.registry, loaded, config.max_batch,
                             config.incremental_detokenize)
        self.started = int(time.time())
        # cheap until the first capture builds its PII scrubber
        self.capture = CaptureStore(config.database)
        self.requests = ConcurrencyLimit(config.limits.max_concurrent_requests)
        self._indexes: dict[str, object] = {}
        self._index_lock = threading.Lock()
        self.fine_tuned_registry = Registry(config.database)
        self.canaries = Canaries(config.database)
        self.promotions = Promotions(config.database)
        self._fine_tuned: dict[str, str] = {}  # fine-tuned model name -> its project

    def start(self) -> None:
        """Start decoding (the engine's background thread)."""
        self.engine.start()

    def stop(self) -> None:
        """Stop decoding; requests still waiting are told the server is shutting down."""
        self.engine.stop()

    # ---- models ----

    def served_models(self, project: str = DEFAULT_PROJECT) -> list[ServedModel]:
        """The base first, then every configured adapter, then the project's fine-tuned models on this base.

        Each model's root is its own name: clients never see where the server keeps the weights."""
        adapters = [ServedModel(source.name, source.name, self.base_id)
                    for source in self.registry.all() if source.name not in self._fine_tuned]
        fine_tuned = [ServedModel(version.name, version.name, self.base_id, version.project, version.created_at)
                      for version in self.fine_tuned_registry.servables(project)
                      if version.base_fingerprint == self.base_fingerprint]
        return [ServedModel(self.base_id, self.base_id, None), *adapters, *fine_tuned]

    @property
    def base_fingerprint(self) -> str:
        """sha256 of the served base's weights: fine-tuned models are matched to it, never by name."""
        if self._base_fingerprint is None:
            self._base_fingerprint = fingerprint(self.config.base)
        return self._base_fingerprint

    def route(self, model: str, project: str = DEFAULT_PROJECT, user: str | None = None,
              conversation: str | None = None) -> Route:
        """What answers a request naming `model`: the adapter, the version it is, and for `MODEL@ALIAS` the alias
        (followed on every request, so a promotion or rollback needs no restart) and the arm: under an active
        canary split the challenger answers a stable share of users (`user`) or conversations (`conversation`,
        a key of it), under a shadow split the champion answers and the Route names the challenger as the shadow."""
        if "@" in model and not model.startswith("ft:"):
            name, alias = model.rsplit("@", 1)
            version = self.promotions.resolve_alias(project, name, alias)
            split = self.canaries.active(project, name, alias)
            if split is None or split.champion_version != version:  # a moved alias ends the split's routing
                return Route(self.adapter_for(version, project), version, alias, "primary")
            challenger = split.challenger_takes(user, conversation)
            if split.mode == "canary" and challenger:
                return Route(self.adapter_for(split.challenger_version, project), split.challenger_version, alias,
                             "canary", split.id)
            if split.mode == "shadow" and challenger:
                return Route(self.adapter_for(version, project), version, alias, "primary", split.id,
                             split.challenger_version, self.adapter_for(split.challenger_version, project))
            return Route(self.adapter_for(version, project), version, alias, "primary", split.id)
        adapter = self.adapter_for(model, project)
        return Route(adapter, adapter)

    def adapter_for(self, model: str, project: str = DEFAULT_PROJECT) -> str | None:
        """The adapter a request's `model` names (None for the base); NotFoundError for other names, and for
        another project's fine-tuned models."""
        if model == self.base_id:
            return None
        owner = self._fine_tuned.get(model)
        if owner is not None and owner != project:
            self.fine_tuned_registry.servable(model, project)  # raises NotFoundError naming the model
        if self.registry.get(model) is not None:
            return model
        if model.startswith("ft:"):
            return self._load_fine_tuned(model, project)
        known = ", ".join([self.base_id, *(source.name for source in self.registry.all())])
        raise NotFoundError(f"The model '{model}' does not exist on this server; served models: {known}. "
                            "GET /v1/models lists them.", param="model", code="model_not_found")

    def _load_fine_tuned(self, name: str, project: str) -> str:
        """Register a fine-tuned model (or checkpoint) of `project` from the model registry; the engine loads
        its weights on first use."""
        version = self.fine_tuned_registry.servable(name, project)
        if version.base_fingerprint != self.base_fingerprint:
            raise NotFoundError(f"The model '{name}' was fine-tuned from '{version.base_model}', and this server "
                                f"serves another base ('{self.base_id}'); serve it from a server of that base",
                                param="model", code="model_not_found")
        if not (version.weights_dir / "adapter_config.json").is_file():
            raise RequestError(f"The model '{name}' is a whole fine-tuned model, not an adapter on this base; "
                               "serve it with `hone serve --base` on its weights", param="model",
                               code="model_not_servable")
        self._fine_tuned[name] = version.project
        self.registry.add(AdapterSource(name, version.weights_dir, None, version.base_model))
        return name

    async def load_adapter(self, lora_name: str, lora_path: str, actor: str | None = None) -> None:
        """Register the adapter at `lora_path` as model `lora_name` and load it into memory now (audited)."""
        if lora_name == self.base_id or self.registry.get(lora_name) is not None:
            raise RequestError(f"The lora adapter '{lora_name}' has already been loaded.", param="lora_name")
        if not MODEL_NAME.match(lora_name):
            raise RequestError(f"lora_name {lora_name!r} must be letters, digits and ._:/- (at most 128)",
                               param="lora_name")
        try:
            source = resolve_request_adapter(lora_name, lora_path, self.config.adapter_roots, self.config.base,
                                             self.base_dir, lambda: self.base_fingerprint)
        except OtherBase as error:
            log.info("refused lora_path for %r: %s", lora_name, error)
            raise RequestError(f"lora_path holds an adapter trained on another base model; this server serves "
                               f"'{self.base_id}'", param="lora_path",
                               hint="load it on a server of the base it was trained on") from None
        except HoneError as error:
            log.info("refused lora_path for %r: %s", lora_name, error.__cause__ or error)
            raise RequestError(error.message, param="lora_path") from None
        self.registry.add(source)
        try:
            await asyncio.wrap_future(self.engine.load_adapter(source))
        except HoneError as error:
            self.registry.remove(lora_name)
            log.warning("could not load adapter %r from %s: %s", lora_name, source.adapter_dir, error)
            raise RequestError(f"the adapter at lora_path could not be loaded on this server's base "
                               f"'{self.base_id}'; the server's log says why", param="lora_path") from None
        await asyncio.to_thread(self._audit, actor, "adapter.loaded", lora_name,
                                {"adapter_dir": str(source.adapter_dir)})

    async def unload_adapter(self, lora_name: str, actor: str | None = None) -> None:
        """Stop serving adapter `lora_name`; requests already running with it finish first (audited)."""
        if self.registry.remove(lora_name) is None:
            raise NotFoundError(f"The lora adapter '{lora_name}' cannot be found.", param="lora_name",
                                code="model_not_found")
        await asyncio.wrap_future(self.engine.unload_adapter(lora_name))
        await asyncio.to_thread(self._audit, actor, "adapter.unloaded", lora_name, None)

    def _audit(self, actor: str | None, action: str, name: str, details: dict | None) -> None:
        """A change to what this server serves, in the audit log (adapters belong to the server's operator)."""
        with session(engine_for(self.config.database)) as db:
            audit.record(db, project=DEFAULT_PROJECT, actor=actor, action=action, object_type="adapter",
                         object_id=name, details={"server_base": self.base_id, **(details or {})})

    # ---- requests ----

    def max_new_tokens(self, requested: int | None, prompt_tokens: int, *, length_param: str,
                       prompt_param: str) -> int:
        """The tokens a request may generate: `requested` checked against the limits and the context left after
        its prompt, or the configured default. Errors name the request fields `length_param` and `prompt_param`."""
        limits = self.config.limits
        if requested is not None and requested > limits.max_tokens:
            raise RequestError(f"{length_param} is {requested}, above this server's limit of {limits.max_tokens} "
                               "(limits.max_tokens); ask for fewer tokens", param=length_param, code="invalid_value")
        room = self.context_length - prompt_tokens
        if room < 1 or (requested is not None and requested > room):
            raise RequestError(f"{prompt_param}: the prompt is {prompt_tokens} tokens and {length_param} "
                               f"{requested or 1} more exceed the model's context of {self.context_length} tokens; "
                               "shorten the prompt or ask for fewer tokens", param=prompt_param,
                               code="context_length_exceeded")
        return requested or min(limits.default_max_tokens, limits.max_tokens, room)

    def _index(self, reference: str):
        """An opened retrieval index by `indexes` name or path, opened once and kept."""
        from hone.retrieval.store import open_index

        entry = self.config.indexes.get(reference)
        path = entry.path if entry is not None else Path(reference)
        with self._index_lock:
            if reference not in self._indexes:
                self._indexes[reference] = open_index(path)
            return self._indexes[reference]

    async def passages(self, model: str, query: str, *, index: str | None = None, top_k: int | None = None,
                       project: str = DEFAULT_PROJECT) -> list[dict]:
        """Top-k passages for `query` from the request's `index` or the model's own ([] when neither names one).

        A request of `project` may name only that project's indexes; another project's is refused exactly as an
        unknown name is, listing only `project`'s own."""
        options = self.config.options(model)
        mine = self.config.project_indexes(project)
        if index is not None and index not in mine:
            known = ", ".join(mine) or f"none are configured for project {project!r} (add `indexes:` to serve.yaml)"
            raise RequestError(f"index {index!r} is not one of this server's indexes: {known}", param="index")
        reference = index or options.index
        if not reference:
            return []
        try:
            opened = await asyncio.to_thread(self._index, reference)
            return await asyncio.to_thread(opened.search, query, top_k or options.top_k)
        except HoneError as error:
            failure = RequestError if index else GenerationFailed  # the model's own index is the server's fault
            raise failure(f"index: {error}", param="index") from None

    async def chat_prompt(self, model: str, messages: list[dict], *, index: str | None = None,
                          top_k: int | None = None, project: str = DEFAULT_PROJECT,
                          tools: list[dict] | None = None) -> Prompt:
        """The prompt `model` is fed for a conversation of `project`: passages retrieved for its last user turn
        (from `index` or the model's own) put into its system message, rendered with the chat template (with the
        `tools` it may call)."""
        if tools and not writes_default_tool_calls(self.tokenizer):
            raise RequestError(f"tools: the chat template of '{self.base_id}' writes tool calls in its own format, "
                               "which hone cannot yet read back into tool_calls; serve tools with a model whose "
                               "template has no tool support (hone's default format) or uses <tool_call> tags",
                               param="tools", code="tools_not_supported")
        passages = await self.passages(model, retrieval_query(messages), index=index, top_k=top_k, project=project)
        return Prompt(render_prompt(self.tokenizer, rag_messages(messages, passages), tools), passages)

    def _grammar_tokenizer(self):
        return grammar_tokenizer(self.tokenizer, self.vocab_size, tuple(self.engine.eos_ids))

    async def constraints(self, grammar: OutputGrammar, count: int, param: str) -> list[Constraint]:
        """`count` fresh constraints (one per reply) holding replies to `grammar`; a RequestError naming `param`
        when the grammar cannot be built (a schema feature that cannot be enforced, a schema nothing matches)."""
        def build() -> list[Constraint]:
            tokenizer = self._grammar_tokenizer()
            return [Constraint(grammar, tokenizer, param) for _ in range(count)]
        return await asyncio.to_thread(build)

    def token_bytes(self, token: int) -> bytes:
        """A token's exact bytes (part of a character, for a character split across tokens)."""
        return self._grammar_tokenizer().decode_bytes([token])

    async def text_prompt(self, model: str, prompt: str, *, index: str | None = None,
                          top_k: int | None = None, project: str = DEFAULT_PROJECT) -> Prompt:
        """The prompt `model` is fed for a plain-text prompt of `project`, with the passages retrieved for it
        before it."""
        passages = await self.passages(model, prompt, index=index, top_k=top_k, project=project)
        ids = list(self.tokenizer(rag_text(prompt, passages))["input_ids"])
        if not ids:
            raise RequestError("prompt: it is empty; send some text", param="prompt")
        return Prompt(ids, passages)

    async def record(self, project: str, model: str, response_id: str, request: dict, text: str,
                     usage: dict, served: Served | None = None, split: bool = False) -> None:
        """Store `project`'s exchange when the model has capture on, or when it belongs to an alias split under
        comparison (`split`); a storage failure is logged, not hidden."""
        if not (split or self.config.options(model).capture or self._monitored(served)):
            return
        try:
            await asyncio.to_thread(lambda: self.capture.record(
                response_id=response_id, model=model, request=request, response_text=text, usage=usage,
                project=project, served=served))
        except Exception:
            log.exception("could not capture response %s", response_id)

    def _monitored(self, served: Served | None) -> bool:
        """Whether the request went to a registered fine-tuned model (by name or alias) the server captures for
        monitoring."""
        return self.config.capture_fine_tuned and served is not None and (
            served.alias is not None or (served.version or "").startswith("ft:"))

    async def feedback(self, project: str, response_id: str, rating: int | None, correction: str | None) -> None:
        """Attach a rating and/or a corrected answer to a response `project` produced (another project's is 404)."""
        try:
            await asyncio.to_thread(lambda: self.capture.feedback(
                response_id=response_id, rating=rating, correction=correction, project=project))
        except KeyError:
            raise NotFoundError(f"no captured response with id '{response_id}'", param="response_id",
                                code="not_found") from None
        except ValueError as error:
            raise RequestError(str(error), param="rating") from None


class Generation:
    """One request's run through the engine, read as events, cancelled if the client leaves or time runs out.

    `is_disconnected` tells whether the client has gone; it is polled while no token arrives.
    """

    def __init__(self, server: ModelServer, prompt_ids: list[int], adapter: str | None, params: SamplingParams,
                 is_disconnected: Callable[[], Awaitable[bool]], constraint: Constraint | None = None):
        self.server = server
        self.is_disconnected = is_disconnected
        self.prompt_tokens = len(prompt_ids)
        self.sequence = Sequence(prompt_ids, adapter, params, asyncio.get_running_loop(), asyncio.Queue(),
                                 constraint=constraint)
        self.deadline = time.monotonic() + server.config.limits.request_timeout_s

    @property
    def completion_tokens(self) -> int:
        return len(self.sequence.generated)

    def cancel(self) -> None:
        """Free the sequence's batch slot now if it is still generating (the reader has gone)."""
        if not self.sequence.finished:
            self.server.engine.cancel(self.sequence)

    async def events(self) -> AsyncIterator[Event]:
        """Events until the last one; raises NotFoundError when the adapter was unloaded meanwhile,
        GenerationFailed on engine errors and GenerationTimeout past the time limit."""
        self.server.engine.submit(self.sequence)
        try:
            while True:
                event = await self._next()
                if event is None:
                    return  # the client is gone
                if event.error:
                    if event.model_missing:
                        raise NotFoundError(event.error, code="model_not_found")
                    raise GenerationFailed(event.error)
                yield event
                if event.finish_reason:
                    return
        finally:
            self.cancel()

    async def _next(self) -> Event | None:
        while True:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                limit = self.server.config.limits.request_timeout_s
                raise GenerationTimeout(f"the request took longer than {limit:g} s (limits.request_timeout_s); "
                                        "ask for fewer tokens or retry when the server is less busy",
                                        code="timeout")
            try:
                return await asyncio.wait_for(self.sequence.queue.get(), min(remaining, DISCONNECT_POLL_S))
            except TimeoutError:
                if await self.is_disconnected():
                    return None

    async def collect(self) -> Reply:
        """The whole reply (for non-streaming responses); its finish reason is None when the client left."""
        parts, finish_reason, logprobs = [], None, []
        async for event in self.events():
            parts.append(event.text)
            finish_reason = event.finish_reason or finish_reason
            logprobs += event.logprobs or []
        return Reply("".join(parts), finish_reason, logprobs)


@dataclass(frozen=True)
class Reply:
    """One whole generated reply: its text, why it ended (None: the client left) and its tokens' logprobs."""

    text: str
    finish_reason: str | None
    logprobs: list[TokenLogprobs]
