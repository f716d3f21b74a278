"""Inference over /v1: chat and text completions (whole or streamed as SSE), adapters loaded and unloaded at
run time (vLLM's endpoints), and feedback on captured answers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from hone.api.auth import Admin, Developer
from hone.api.deps import CurrentServer
from hone.api.errors import APIError, error_responses, sse_error
from hone.api.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ChunkWriter,
    CompletionChoice,
    CompletionRequest,
    FeedbackRequest,
    FeedbackResponse,
    GenerationFields,
    LoadAdapterRequest,
    TextCompletion,
    UnloadAdapterRequest,
    Usage,
    new_id,
)
from hone.errors import RequestError
from hone.monitor.canary import conversation_key
from hone.monitor.capture import Served
from hone.serve.engine import SamplingParams
from hone.serve.limits import Slot
from hone.serve.server import Generation, ModelServer, Prompt, Route

router = APIRouter(tags=["inference"])
GENERATION_ERRORS = error_responses(400, 404, 413, 429, 504)
log = logging.getLogger("hone.api")
_shadows: set[asyncio.Task] = set()  # running shadow generations, kept referenced until they finish


def _stream_of(chunk_model: str) -> dict:
    """OpenAPI `responses=` for a 200 that is JSON, or with `"stream": true` SSE lines of `chunk_model`."""
    return {200: {"description": f"The whole answer, or with `stream` a text/event-stream of `data: {chunk_model}` "
                  "lines ending with `data: [DONE]`",
                  "content": {"text/event-stream": {"schema": {"$ref": f"#/components/schemas/{chunk_model}"}}}}}


@router.post("/chat/completions", response_model=ChatCompletion,
             responses={**GENERATION_ERRORS, **_stream_of("ChatCompletionChunk")})
async def chat_completions(body: ChatCompletionRequest, request: Request, server: CurrentServer,
                           me: Developer) -> ChatCompletion | Response:
    """OpenAI's chat completion, with passages from a retrieval index when the request or the model names one."""
    started = time.perf_counter()
    route = await run_in_threadpool(server.route, body.model, me.project, body.user,
                                    conversation_key(body.conversation()))
    slot = server.requests.acquire()
    try:
        prompt = await server.chat_prompt(body.model, body.conversation(), index=body.index, top_k=body.top_k,
                                          project=me.project)
        return await _respond(server, request, slot, body, prompt, route, "messages", chat=True,
                              project=me.project, started=started)
    except BaseException:
        slot.release()
        raise


@router.post("/completions", response_model=TextCompletion,
             responses={**GENERATION_ERRORS, **_stream_of("CompletionChunk")})
async def completions(body: CompletionRequest, request: Request, server: CurrentServer,
                      me: Developer) -> TextCompletion | Response:
    """OpenAI's (legacy) text completion of one prompt."""
    started = time.perf_counter()
    route = await run_in_threadpool(server.route, body.model, me.project, body.user,
                                    conversation_key([{"role": "user", "content": body.prompt_text()}]))
    slot = server.requests.acquire()
    try:
        prompt = await server.text_prompt(body.model, body.prompt_text(), index=body.index, top_k=body.top_k,
                                          project=me.project)
        return await _respond(server, request, slot, body, prompt, route, "prompt", chat=False,
                              project=me.project, started=started)
    except BaseException:
        slot.release()
        raise


@router.post("/load_lora_adapter", response_class=PlainTextResponse, responses=error_responses(400))
async def load_lora_adapter(body: LoadAdapterRequest, server: CurrentServer, me: Admin) -> str:
    """Serve a LoRA adapter (a `hone train` run directory or a PEFT folder) as a new model, as vLLM does."""
    await server.load_adapter(body.lora_name, body.lora_path, actor=me.actor)
    return f"Success: LoRA adapter '{body.lora_name}' added successfully."


@router.post("/unload_lora_adapter", response_class=PlainTextResponse, responses=error_responses(404))
async def unload_lora_adapter(body: UnloadAdapterRequest, server: CurrentServer, me: Admin) -> str:
    """Stop serving an adapter; requests already running with it finish first."""
    await server.unload_adapter(body.lora_name, actor=me.actor)
    return f"Success: LoRA adapter '{body.lora_name}' removed successfully."


@router.post("/feedback", responses=error_responses(400, 404))
async def feedback(body: FeedbackRequest, server: CurrentServer, me: Developer) -> FeedbackResponse:
    """A rating and/or corrected answer for a captured response (`id` of a completion from a model with capture)."""
    await server.feedback(me.project, body.response_id, body.rating, body.correction)
    return FeedbackResponse(response_id=body.response_id)


def _sampling(server: ModelServer, body: GenerationFields, prompt: Prompt, prompt_param: str) -> SamplingParams:
    """The request's sampling settings, its length checked against the limits and the context."""
    max_tokens = server.max_new_tokens(body.requested_tokens(), len(prompt.ids), length_param=body.length_param(),
                                       prompt_param=prompt_param)
    return SamplingParams(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, seed=body.seed,
                          stop=body.stop_strings(), ignore_eos=body.ignore_eos)


def _served(route: Route, started: float, finish_reason: str | None) -> Served:
    """How the request was answered, for the capture: by what, through which alias and arm, how fast, why it stopped."""
    return Served(version=route.version, alias=route.alias, arm=route.arm, finish_reason=finish_reason,
                  latency_ms=round((time.perf_counter() - started) * 1000, 1))


async def _respond(server: ModelServer, request: Request, slot: Slot, body: GenerationFields, prompt: Prompt,
                   route: Route, prompt_param: str, chat: bool, project: str,
                   started: float) -> ChatCompletion | TextCompletion | Response:
    """Run the request and answer it whole or as an SSE stream, in OpenAI's shapes; frees `slot` when done. The
    exchange is captured as `project`'s."""
    params = _sampling(server, body, prompt, prompt_param)
    generation = Generation(server, prompt.ids, route.adapter, params, request.is_disconnected)
    response_id = new_id("chatcmpl" if chat else "cmpl")

    def shadow() -> None:
        _start_shadow(server, route, prompt, params, body, response_id, project)

    if not body.stream:
        try:
            text, finish_reason = await generation.collect()
        finally:
            slot.release()
        if finish_reason is None:
            return Response(status_code=204)  # the client is gone; nothing to answer or capture
        shadow()
        usage = Usage.of(generation.prompt_tokens, generation.completion_tokens)
        await server.record(project, body.model, response_id, body.model_dump(exclude_unset=True), text,
                            usage.model_dump(), _served(route, started, finish_reason), split=route.split is not None)
        sources = prompt.passages or None
        if chat:
            return ChatCompletion(id=response_id, created=int(time.time()), model=body.model, usage=usage,
                                  choices=[ChatChoice(message=AssistantMessage(content=text),
                                                      finish_reason=finish_reason)], sources=sources)
        return TextCompletion(id=response_id, created=int(time.time()), model=body.model, usage=usage,
                              choices=[CompletionChoice(text=text, finish_reason=finish_reason)], sources=sources)
    writer = ChunkWriter(response_id, body.model, chat, body.include_usage_in_stream())
    return StreamingResponse(_stream(server, generation, slot, writer, body, response_id, prompt.passages,
                                     project, route, started, shadow),
                             media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _stream(server: ModelServer, generation: Generation, slot: Slot, writer: ChunkWriter,
                  body: GenerationFields, response_id: str, passages: list[dict], project: str, route: Route,
                  started: float, shadow: Callable[[], None]) -> AsyncIterator[str]:
    try:
        if first := writer.start():
            yield first
        parts = []
        async for event in generation.events():
            parts.append(event.text)
            if event.text:
                yield writer.text(event.text)
            if event.finish_reason:
                shadow()
                usage = Usage.of(generation.prompt_tokens, generation.completion_tokens)
                await server.record(project, body.model, response_id, body.model_dump(exclude_unset=True),
                                    "".join(parts), usage.model_dump(), _served(route, started, event.finish_reason),
                                    split=route.split is not None)
                yield writer.finish(event.finish_reason, usage, passages)
    except RequestError as error:
        yield sse_error(APIError.from_request_error(error))
    finally:
        generation.cancel()
        slot.release()


def _start_shadow(server: ModelServer, route: Route, prompt: Prompt, params: SamplingParams, body: GenerationFields,
                  response_id: str, project: str) -> None:
    """Under a shadow split, answer a copy of the request with the challenger in the background, after the client's
    answer is complete (so it never delays or changes it, and holds no client slot). Dropped while clients and
    running shadows together fill the concurrency limit: clients come first, and shadows cannot pile up."""
    if route.shadow is None or server.requests.in_flight + len(_shadows) >= server.requests.limit:
        return
    task = asyncio.create_task(_shadow(server, route, prompt, params, body, response_id, project))
    _shadows.add(task)
    task.add_done_callback(_shadows.discard)


async def _shadow(server: ModelServer, route: Route, prompt: Prompt, params: SamplingParams, body: GenerationFields,
                  response_id: str, project: str) -> None:
    """The challenger's reply to a shadow copy, captured as arm `shadow` under `{response_id}-shadow`."""
    started = time.perf_counter()
    shadow = Route(route.shadow_adapter, route.shadow, route.alias, "shadow", route.split)

    async def stays() -> bool:
        return False

    try:
        generation = Generation(server, prompt.ids, shadow.adapter, params, stays)
        text, finish_reason = await generation.collect()
        usage = Usage.of(generation.prompt_tokens, generation.completion_tokens)
        await server.record(project, body.model, f"{response_id}-shadow", body.model_dump(exclude_unset=True), text,
                            usage.model_dump(), _served(shadow, started, finish_reason), split=True)
    except Exception:
        log.exception("shadow generation for %s failed", response_id)
