"""The OpenAI-compatible HTTP server: one base model and its adapters behind `/v1`, decoded by the engine."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import threading
import time
from collections.abc import AsyncIterator
from collections.abc import Sequence as Seq
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from hone.data.render import render_prompt
from hone.errors import HoneError
from hone.models import frozen_dtype, load_model, load_tokenizer, local_model_dir
from hone.models.finetuned import default_device
from hone.serve import protocol as api
from hone.serve.adapters import AdapterRegistry, LoadedAdapters, resolve_adapter
from hone.serve.config import MODEL_NAME, ServeConfig
from hone.serve.engine import Engine, Event, SamplingParams, Sequence
from hone.serve.limits import BodySizeLimit, ConcurrencyLimit, Slot

log = logging.getLogger("hone.serve")
DISCONNECT_POLL_S = 0.5  # how often a request waiting for tokens checks that its client is still there
RAG_PREAMBLE = "Use these passages where they help, and cite them as [n]:"


class Server:
    """What one `hone serve` process holds: the model and engine, adapters, keys, capture and indexes."""

    def __init__(self, config: ServeConfig, api_keys: Seq[str] = ()):
        self.config = config
        self.base_id = config.served_base
        device = default_device() if config.device == "auto" else config.device
        if config.threads:
            torch.set_num_threads(config.threads)
        self.base_dir = local_model_dir(config.base)
        model = load_model(config.base, dtype=frozen_dtype(device, config.dtype), device=device).eval()
        self.tokenizer = load_tokenizer(config.base)
        self.context_length = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
        self.registry = AdapterRegistry()
        for name, path in config.adapters.items():
            try:
                self.registry.add(resolve_adapter(name, path, config.base, self.base_dir))
            except HoneError as error:
                raise HoneError(f"adapters.{name}: {error.message}", hint=error.hint) from None
        loaded = LoadedAdapters(model, config.base, config.max_adapters)
        self.engine = Engine(model, self.tokenizer, self.registry, loaded, config.max_batch)
        self.started = int(time.time())
        self._init_keys(api_keys)
        self.capture = self._capture_store()
        self.requests = ConcurrencyLimit(config.limits.max_concurrent_requests)
        self._indexes: dict[str, object] = {}
        self._index_lock = threading.Lock()

    # ---- protection ----

    def _init_keys(self, api_keys: Seq[str]) -> None:
        from hone.serve.keys import KeyStore

        self.key_store = KeyStore(self.config.database)
        self._cli_keys = [hashlib.sha256(key.encode()).digest() for key in api_keys]  # never kept in plain text
        if self.config.api_key_required and not self.keys_required():
            raise HoneError("api_key_required is set but no API key exists",
                            hint="create one with `hone keys create NAME`, or pass --api-key KEY")

    def keys_required(self) -> bool:
        return bool(self._cli_keys) or self.key_store.has_keys()

    def key_is_valid(self, key: str) -> bool:
        digest = hashlib.sha256(key.encode()).digest()
        if any(hmac.compare_digest(digest, known) for known in self._cli_keys):
            return True
        return self.key_store.verify(key)

    def _capture_store(self):
        if not any(self.config.options(name).capture for name in [self.base_id, *self.config.adapters]):
            return None
        from hone.serve.capture import CaptureStore

        return CaptureStore(self.config.database)

    # ---- models ----

    def model_list(self) -> dict:
        base = {"id": self.base_id, "object": "model", "created": self.started, "owned_by": "hone",
                "root": self.config.base, "parent": None}
        adapters = [{"id": source.name, "object": "model", "created": self.started, "owned_by": "hone",
                     "root": str(source.run_dir or source.adapter_dir), "parent": self.base_id}
                    for source in self.registry.all()]
        return {"object": "list", "data": [base, *adapters]}

    def adapter_for(self, model: str) -> str | None:
        """The adapter a request's `model` names (None for the base), or 404 model_not_found."""
        if model == self.base_id:
            return None
        if self.registry.get(model) is not None:
            return model
        raise api.model_not_found(model, [self.base_id, *(s.name for s in self.registry.all())])

    async def load_adapter(self, body: api.LoadAdapterRequest) -> None:
        name = body.lora_name
        if name == self.base_id or self.registry.get(name) is not None:
            raise api.APIError(400, f"The lora adapter '{name}' has already been loaded.", param="lora_name")
        if not MODEL_NAME.match(name):
            raise api.APIError(400, f"lora_name {name!r} must be letters, digits and ._:/- (at most 128)",
                               param="lora_name")
        try:
            source = resolve_adapter(name, body.lora_path, self.config.base, self.base_dir)
        except HoneError as error:
            raise api.APIError(400, f"lora_path: {error}", param="lora_path") from None
        self.registry.add(source)
        try:
            await asyncio.wrap_future(self.engine.load_adapter(source))
        except HoneError as error:
            self.registry.remove(name)
            raise api.APIError(400, f"lora_path: {error}", param="lora_path") from None

    async def unload_adapter(self, body: api.UnloadAdapterRequest) -> None:
        if self.registry.remove(body.lora_name) is None:
            raise api.APIError(404, f"The lora adapter '{body.lora_name}' cannot be found.", param="lora_name",
                               code="model_not_found")
        await asyncio.wrap_future(self.engine.unload_adapter(body.lora_name))

    # ---- requests ----

    def sampling(self, body: api.GenerationFields, prompt_tokens: int, param: str) -> SamplingParams:
        """The request's sampling settings with max_tokens checked against the limits and the context."""
        limits = self.config.limits
        requested = body.requested_tokens()
        length_param = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens"
        if requested is not None and requested > limits.max_tokens:
            raise api.APIError(400, f"{length_param} is {requested}, above this server's limit of "
                               f"{limits.max_tokens} (limits.max_tokens); ask for fewer tokens",
                               param=length_param, code="invalid_value")
        room = self.context_length - prompt_tokens
        if room < 1 or (requested is not None and requested > room):
            raise api.APIError(400, f"{param}: the prompt is {prompt_tokens} tokens and {length_param} "
                               f"{requested or 1} more exceed the model's context of {self.context_length} tokens; "
                               "shorten the prompt or ask for fewer tokens", param=param,
                               code="context_length_exceeded")
        max_tokens = requested or min(limits.default_max_tokens, limits.max_tokens, room)
        return SamplingParams(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                              seed=body.seed, stop=body.stop_strings(), ignore_eos=body.ignore_eos)

    def _index(self, reference: str):
        """An opened retrieval index by `indexes` name or path, opened once and kept."""
        from hone.retrieval.store import open_index

        path = self.config.indexes.get(reference) or Path(reference)
        with self._index_lock:
            if reference not in self._indexes:
                self._indexes[reference] = open_index(path)
            return self._indexes[reference]

    async def passages(self, body: api.GenerationFields, model: str, query: str) -> list[dict]:
        """Top-k passages for `query` from the request's or the model's index ([] when neither names one)."""
        options = self.config.options(model)
        if body.index is not None and body.index not in self.config.indexes:
            known = ", ".join(self.config.indexes) or "none are configured (add `indexes:` to serve.yaml)"
            raise api.APIError(400, f"index {body.index!r} is not one of this server's indexes: {known}",
                               param="index")
        reference = body.index or options.index
        if not reference:
            return []
        try:
            index = await run_in_threadpool(self._index, reference)
            return await run_in_threadpool(index.search, query, body.top_k or options.top_k)
        except HoneError as error:
            raise api.APIError(400 if body.index else 500, f"index: {error}", param="index") from None

    async def record(self, model: str, response_id: str, body: api.GenerationFields, text: str,
                     usage: dict) -> None:
        """Store the exchange when the model has capture on; a storage failure is logged, not hidden."""
        if self.capture is None or not self.config.options(model).capture:
            return
        try:
            await run_in_threadpool(lambda: self.capture.record(
                response_id=response_id, model=model, request=body.model_dump(exclude_unset=True),
                response_text=text, usage=usage))
        except Exception:
            log.exception("could not capture response %s", response_id)

    async def feedback(self, body: api.FeedbackRequest) -> None:
        if self.capture is None:
            raise api.APIError(404, f"no response '{body.response_id}': capture is off for every model here",
                               param="response_id", code="not_found")
        try:
            await run_in_threadpool(lambda: self.capture.feedback(
                response_id=body.response_id, rating=body.rating, correction=body.correction))
        except KeyError:
            raise api.APIError(404, f"no captured response with id '{body.response_id}'", param="response_id",
                               code="not_found") from None
        except ValueError as error:
            raise api.APIError(400, str(error), param="rating") from None


def passage_context(passages: list[dict]) -> str:
    """The retrieved passages as numbered, cited text for the prompt."""
    return RAG_PREAMBLE + "\n\n" + "\n\n".join(
        f"[{n}] ({p['source']}:{p['line']}) {p['text']}" for n, p in enumerate(passages, start=1))


def with_passages(messages: list[dict], passages: list[dict]) -> list[dict]:
    """The conversation with the passages added to its system prompt (a system message is made if none)."""
    if not passages:
        return messages
    context = passage_context(passages)
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": messages[0]["content"] + "\n\n" + context}, *messages[1:]]
    return [{"role": "system", "content": context}, *messages]


def _sources_field(passages: list[dict]) -> dict:
    return {"sources": passages} if passages else {}


class Generation:
    """One request's run through the engine, read as events, cancelled if the client leaves or time runs out."""

    def __init__(self, server: Server, request: Request, prompt_ids: list[int], adapter: str | None,
                 params: SamplingParams):
        self.server, self.request = server, request
        self.prompt_tokens = len(prompt_ids)
        self.sequence = Sequence(prompt_ids, adapter, params, asyncio.get_running_loop(), asyncio.Queue())
        self.deadline = time.monotonic() + server.config.limits.request_timeout_s

    @property
    def usage(self) -> dict:
        return api.usage(self.prompt_tokens, len(self.sequence.generated))

    def cancel(self) -> None:
        """Free the sequence's batch slot now if it is still generating (the reader has gone)."""
        if not self.sequence.finished:
            self.server.engine.cancel(self.sequence)

    async def events(self) -> AsyncIterator[Event]:
        """Events until the last one; raises APIError on engine errors and on timeout."""
        engine = self.server.engine
        engine.submit(self.sequence)
        try:
            while True:
                event = await self._next()
                if event is None:
                    return  # the client is gone
                if event.error:
                    code = "model_not_found" if event.status == 404 else None
                    raise api.APIError(event.status, event.error, code=code,
                                       type="invalid_request_error" if event.status < 500 else "server_error")
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
                raise api.APIError(504, f"the request took longer than {limit:g} s (limits.request_timeout_s); "
                                   "ask for fewer tokens or retry when the server is less busy",
                                   type="server_error", code="timeout")
            try:
                return await asyncio.wait_for(self.sequence.queue.get(), min(remaining, DISCONNECT_POLL_S))
            except TimeoutError:
                if await self.request.is_disconnected():
                    return None

    async def collect(self) -> tuple[str, str | None]:
        """The whole text and finish reason (for non-streaming responses); None when the client left."""
        parts, finish_reason = [], None
        async for event in self.events():
            parts.append(event.text)
            finish_reason = event.finish_reason or finish_reason
        return "".join(parts), finish_reason


async def _respond(server: Server, request: Request, slot: Slot, body: api.GenerationFields,
                   prompt_ids: list[int], adapter: str | None, params: SamplingParams, passages: list[dict],
                   chat: bool):
    """Run the request and answer it whole or as an SSE stream, in OpenAI's shapes; frees `slot` when done."""
    generation = Generation(server, request, prompt_ids, adapter, params)
    response_id = api.new_id("chatcmpl" if chat else "cmpl")
    extra = _sources_field(passages)
    if not body.stream:
        try:
            text, finish_reason = await generation.collect()
        finally:
            slot.release()
        if finish_reason is None:
            return Response(status_code=204)  # the client is gone; nothing to answer or capture
        await server.record(body.model, response_id, body, text, generation.usage)
        build = api.chat_response if chat else api.completion_response
        return JSONResponse(build(response_id, body.model, text, finish_reason, generation.usage, extra))
    writer = api.ChunkWriter(response_id, body.model, chat, body.include_usage_in_stream())
    return StreamingResponse(_stream(server, generation, slot, writer, body, response_id, extra),
                             media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _stream(server: Server, generation: Generation, slot: Slot, writer: api.ChunkWriter,
                  body: api.GenerationFields, response_id: str, extra: dict) -> AsyncIterator[str]:
    try:
        if first := writer.start():
            yield first
        parts = []
        async for event in generation.events():
            parts.append(event.text)
            if event.text:
                yield writer.text(event.text)
            if event.finish_reason:
                await server.record(body.model, response_id, body, "".join(parts), generation.usage)
                yield writer.finish(event.finish_reason, generation.usage, extra)
    except api.APIError as error:
        yield writer.error(error)
    finally:
        generation.cancel()
        slot.release()


def _error_response(error: api.APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def _validation_error(error: RequestValidationError) -> JSONResponse:
    """FastAPI's validation errors in OpenAI's shape, `param` naming the first offending field."""
    first = error.errors()[0]
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return _error_response(api.APIError(400, f"the request body is not valid JSON: {first.get('msg')}"))
    param = ".".join(location) or None
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        message = "unknown parameter; remove it (see the OpenAI API reference for this endpoint)"
    return _error_response(api.APIError(400, f"{param or 'body'}: {message}", param=param, code="invalid_value"))


def create_app(config: ServeConfig, api_keys: Seq[str] = ()) -> FastAPI:
    """The FastAPI app serving `config`'s base model and adapters; the engine runs while the app does."""
    server = Server(config, api_keys)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        server.engine.start()
        try:
            yield
        finally:
            server.engine.stop()

    app = FastAPI(title="hone", description="OpenAI-compatible serving of a base model and its LoRA adapters.",
                  lifespan=lifespan)
    app.state.server = server
    app.add_middleware(BodySizeLimit, max_bytes=config.limits.max_request_bytes)
    app.add_exception_handler(api.APIError, lambda _request, error: _error_response(error))
    app.add_exception_handler(RequestValidationError, lambda _request, error: _validation_error(error))
    app.add_exception_handler(StarletteHTTPException, lambda _request, error: _error_response(
        api.APIError(error.status_code, str(error.detail), code="not_found" if error.status_code == 404 else None)))

    async def require_key(request: Request) -> None:
        if not await run_in_threadpool(server.keys_required):
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise api.APIError(401, "You didn't provide an API key: send it as 'Authorization: Bearer KEY'",
                               code="invalid_api_key")
        if not await run_in_threadpool(server.key_is_valid, key.strip()):
            raise api.APIError(401, "Incorrect API key provided; create one with `hone keys create NAME`",
                               code="invalid_api_key")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])

    @v1.get("/models")
    async def list_models() -> dict:
        return server.model_list()

    async def chat_prompt(body: api.ChatCompletionRequest) -> tuple[list[int], list[dict]]:
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]
        query = next((m["content"] for m in reversed(messages) if m["role"] == "user"), messages[-1]["content"])
        passages = await server.passages(body, body.model, query)
        return render_prompt(server.tokenizer, with_passages(messages, passages)), passages

    async def text_prompt(body: api.CompletionRequest) -> tuple[list[int], list[dict]]:
        prompt = body.prompt_text()
        passages = await server.passages(body, body.model, prompt)
        if passages:
            prompt = passage_context(passages) + "\n\n" + prompt
        prompt_ids = list(server.tokenizer(prompt)["input_ids"])
        if not prompt_ids:
            raise api.APIError(400, "prompt: it is empty; send some text", param="prompt")
        return prompt_ids, passages

    async def generate(body: api.GenerationFields, request: Request, chat: bool):
        adapter = server.adapter_for(body.model)
        slot = server.requests.acquire()
        try:
            prompt_ids, passages = await (chat_prompt(body) if chat else text_prompt(body))
            params = server.sampling(body, len(prompt_ids), "messages" if chat else "prompt")
            return await _respond(server, request, slot, body, prompt_ids, adapter, params, passages, chat)
        except BaseException:
            slot.release()
            raise

    @v1.post("/chat/completions")
    async def chat_completions(body: api.ChatCompletionRequest, request: Request):
        return await generate(body, request, chat=True)

    @v1.post("/completions")
    async def completions(body: api.CompletionRequest, request: Request):
        return await generate(body, request, chat=False)

    @v1.post("/load_lora_adapter", response_class=PlainTextResponse)
    async def load_lora_adapter(body: api.LoadAdapterRequest) -> str:
        await server.load_adapter(body)
        return f"Success: LoRA adapter '{body.lora_name}' added successfully."

    @v1.post("/unload_lora_adapter", response_class=PlainTextResponse)
    async def unload_lora_adapter(body: api.UnloadAdapterRequest) -> str:
        await server.unload_adapter(body)
        return f"Success: LoRA adapter '{body.lora_name}' removed successfully."

    @v1.post("/feedback")
    async def feedback(body: api.FeedbackRequest) -> dict:
        await server.feedback(body)
        return {"object": "feedback", "response_id": body.response_id, "recorded": True}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": server.base_id, "in_flight": server.requests.in_flight,
                **server.engine.stats()}

    app.include_router(v1)
    return app
