"""Inference over /v1: chat and text completions (whole or streamed as SSE), adapters loaded and unloaded at
run time (vLLM's endpoints), and feedback on captured answers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from hone.api.auth import Admin, Developer
from hone.api.deps import CurrentServer
from hone.api.errors import APIError, error_responses, sse_error
from hone.api.protocol import (
    AssistantMessage,
    CalledFunction,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ChoiceLogprobs,
    ChunkWriter,
    CompletionChoice,
    CompletionRequest,
    FeedbackRequest,
    FeedbackResponse,
    GenerationFields,
    LoadAdapterRequest,
    TextCompletion,
    TokenLogprob,
    ToolCall,
    TopLogprob,
    UnloadAdapterRequest,
    Usage,
    new_id,
)
from hone.data.render import Call, ToolCallStream, parse_tool_calls
from hone.errors import RequestError
from hone.monitor.canary import conversation_key
from hone.monitor.capture import Served
from hone.serve.engine import Event, SamplingParams, TokenLogprobs
from hone.serve.limits import Slot
from hone.serve.server import Generation, ModelServer, Prompt, Reply, Route

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
                                          project=me.project, tools=body.tool_list())
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
    logprobs = body.logprobs_wanted() if isinstance(body, ChatCompletionRequest) else None
    return SamplingParams(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, seed=body.seed,
                          stop=body.stop_strings(), ignore_eos=body.ignore_eos, logprobs=logprobs)


def _served(route: Route, started: float, finish_reason: str | None) -> Served:
    """How the request was answered, for the capture: by what, through which alias and arm, how fast, why it stopped."""
    return Served(version=route.version, alias=route.alias, arm=route.arm, finish_reason=finish_reason,
                  latency_ms=round((time.perf_counter() - started) * 1000, 1))


async def _generations(server: ModelServer, request: Request, body: GenerationFields, prompt: Prompt,
                       route: Route, params: SamplingParams) -> list[Generation]:
    """One generation per requested choice (`n`), each with its own grammar state and, under a seed, its own seed."""
    grammar = body.output_grammar() if isinstance(body, ChatCompletionRequest) else None
    constraints = await server.constraints(grammar, body.n, body.grammar_param()) if grammar else [None] * body.n
    return [Generation(server, prompt.ids, route.adapter,
                       replace(params, seed=None if params.seed is None else params.seed + i),
                       request.is_disconnected, constraint) for i, constraint in enumerate(constraints)]


def _usage(generations: list[Generation]) -> Usage:
    """The prompt counted once, the tokens of every choice."""
    return Usage.of(generations[0].prompt_tokens, sum(g.completion_tokens for g in generations))


async def _respond(server: ModelServer, request: Request, slot: Slot, body: GenerationFields, prompt: Prompt,
                   route: Route, prompt_param: str, chat: bool, project: str,
                   started: float) -> ChatCompletion | TextCompletion | Response:
    """Run the request and answer it whole or as an SSE stream, in OpenAI's shapes; frees `slot` when done. The
    exchange (its first choice) is captured as `project`'s."""
    params = _sampling(server, body, prompt, prompt_param)
    generations = await _generations(server, request, body, prompt, route, params)
    response_id = new_id("chatcmpl" if chat else "cmpl")

    def shadow() -> None:
        _start_shadow(server, route, prompt, params, body, response_id, project)

    if not body.stream:
        try:
            replies = await _collect_all(generations)
        finally:
            slot.release()
        if any(reply.finish_reason is None for reply in replies):
            return Response(status_code=204)  # the client is gone; nothing to answer or capture
        shadow()
        usage = _usage(generations)
        await server.record(project, body.model, response_id, body.model_dump(exclude_unset=True), replies[0].text,
                            usage.model_dump(), _served(route, started, replies[0].finish_reason),
                            split=route.split is not None)
        sources = prompt.passages or None
        if chat:
            choices = [_chat_choice(server, body, index, reply) for index, reply in enumerate(replies)]
            return ChatCompletion(id=response_id, created=int(time.time()), model=body.model, usage=usage,
                                  choices=choices, sources=sources)
        return TextCompletion(id=response_id, created=int(time.time()), model=body.model, usage=usage,
                              choices=[CompletionChoice(index=index, text=reply.text, finish_reason=reply.finish_reason)
                                       for index, reply in enumerate(replies)], sources=sources)
    writer = ChunkWriter(response_id, body.model, chat, body.include_usage_in_stream())
    return StreamingResponse(_stream(server, generations, slot, writer, body, response_id, prompt.passages,
                                     project, route, started, shadow),
                             media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _collect_all(generations: list[Generation]) -> list[Reply]:
    """Every choice's whole reply; when one fails, the others are cancelled (their batch slots freed) too."""
    tasks = [asyncio.ensure_future(generation.collect()) for generation in generations]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


def _chat_choice(server: ModelServer, body: ChatCompletionRequest, index: int, reply: Reply) -> ChatChoice:
    """One whole chat reply in OpenAI's shape: its text, its tool calls read out of it, its logprobs."""
    content, calls, finish_reason = reply.text, None, reply.finish_reason
    if body.calls_tools():
        content, found = parse_tool_calls(reply.text)
        calls = [ToolCall(id=new_id("call"), function=CalledFunction(name=name, arguments=arguments))
                 for name, arguments in found] or None
        content = content or (None if calls else "")
        finish_reason = "tool_calls" if calls and finish_reason == "stop" else finish_reason
    logprobs = _logprobs(server, reply.logprobs) if body.logprobs else None
    return ChatChoice(index=index, message=AssistantMessage(content=content, tool_calls=calls), logprobs=logprobs,
                      finish_reason=finish_reason)


def _logprobs(server: ModelServer, tokens: list[TokenLogprobs] | None) -> ChoiceLogprobs:
    """The engine's token log probabilities with each token's text and bytes."""
    def top(token: int, logprob: float) -> TopLogprob:
        raw = server.token_bytes(token)
        return TopLogprob(token=raw.decode("utf-8", errors="replace"), logprob=logprob, bytes=list(raw))
    return ChoiceLogprobs(content=[TokenLogprob(**top(t.token, t.logprob).model_dump(),
                                                top_logprobs=[top(i, lp) for i, lp in t.top]) for t in tokens or []])


class _ChoiceStream:
    """One choice of a streamed chat reply: its text split into content and tool calls, and its finish reason."""

    def __init__(self, writer: ChunkWriter, index: int, tools: bool):
        self.writer, self.index = writer, index
        self.reader = ToolCallStream() if tools else None
        self.calls = 0

    def chunks(self, text: str, logprobs: ChoiceLogprobs | None) -> list[str]:
        """The chunks for new text (the logprobs of its tokens ride on the first, or on an empty delta)."""
        parts = self.reader.feed(text) if self.reader else [text] if text else []
        if logprobs is not None and not (parts and isinstance(parts[0], str)):
            return [self.writer.text("", self.index, logprobs), *(self._part(part) for part in parts)]
        return [self._part(part, logprobs if i == 0 else None) for i, part in enumerate(parts)]

    def finish(self, finish_reason: str, sources: list[dict] | None) -> list[str]:
        lines = [self._part(part) for part in (self.reader.finish() if self.reader else [])]
        reason = "tool_calls" if self.calls and finish_reason == "stop" else finish_reason
        return [*lines, self.writer.finish_choice(self.index, reason, sources)]

    def _part(self, part: str | Call, logprobs: ChoiceLogprobs | None = None) -> str:
        if isinstance(part, str):
            return self.writer.text(part, self.index, logprobs)
        self.calls += 1
        return self.writer.tool_call(self.index, self.calls - 1, new_id("call"), part.name, part.arguments)


async def _events(generations: list[Generation]) -> AsyncIterator[tuple[int, Event]]:
    """The events of every choice as they come, tagged with the choice's index."""
    if len(generations) == 1:
        async for event in generations[0].events():
            yield 0, event
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, generation: Generation) -> None:
        try:
            async for event in generation.events():
                await queue.put((index, event, None))
        except Exception as error:
            await queue.put((index, None, error))
        finally:
            await queue.put((index, None, None))

    tasks = [asyncio.create_task(pump(i, generation)) for i, generation in enumerate(generations)]
    try:
        open_choices = len(tasks)
        while open_choices:
            index, event, error = await queue.get()
            if error is not None:
                raise error
            if event is None:
                open_choices -= 1
                continue
            yield index, event
    finally:
        for task in tasks:
            task.cancel()


async def _stream(server: ModelServer, generations: list[Generation], slot: Slot, writer: ChunkWriter,
                  body: GenerationFields, response_id: str, passages: list[dict], project: str, route: Route,
                  started: float, shadow: Callable[[], None]) -> AsyncIterator[str]:
    chat = isinstance(body, ChatCompletionRequest)
    choices = [_ChoiceStream(writer, i, chat and body.calls_tools()) for i in range(len(generations))]
    try:
        if first := writer.start(len(generations)):
            yield first
        first_text, finished = [], 0
        async for index, event in _events(generations):
            if index == 0:
                first_text.append(event.text)
            logprobs = _logprobs(server, event.logprobs) if chat and body.logprobs and event.logprobs else None
            for line in choices[index].chunks(event.text, logprobs):
                yield line
            if not event.finish_reason:
                continue
            finished += 1
            for line in choices[index].finish(event.finish_reason, passages if finished == len(generations) else None):
                yield line
            if index == 0:
                await server.record(project, body.model, response_id, body.model_dump(exclude_unset=True),
                                    "".join(first_text), _usage(generations[:1]).model_dump(),
                                    _served(route, started, event.finish_reason), split=route.split is not None)
            if finished == len(generations):
                shadow()
                yield writer.end(_usage(generations))
    except RequestError as error:
        yield sse_error(APIError.from_request_error(error))
    finally:
        for generation in generations:
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
        reply = await generation.collect()
        usage = Usage.of(generation.prompt_tokens, generation.completion_tokens)
        await server.record(project, body.model, f"{response_id}-shadow", body.model_dump(exclude_unset=True),
                            reply.text, usage.model_dump(), _served(shadow, started, reply.finish_reason), split=True)
    except Exception:
        log.exception("shadow generation for %s failed", response_id)
