"""OpenAI-compatible request and response bodies, including the chunks of a streamed (SSE) response.

Request bodies reject unknown fields so a typo is a 400 naming the field, not a silently ignored setting.
hone's extensions (vLLM's `ignore_eos`, `index`/`top_k` for retrieval, `sources` in answers) are marked as such.
Responses keep the exact shapes the official `openai` SDK reads.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hone.models.constrained import OutputGrammar, ref_cycle, reply_grammar

FinishReason = Literal["stop", "length", "tool_calls"]
MAX_CHOICES = 8  # `n`: replies per request
MAX_TOP_LOGPROBS = 20  # OpenAI's limit
# OpenAPI extension marking a field whose value is itself a JSON Schema (an object of any shape, by design).
JSON_SCHEMA_VALUE = {"x-json-schema": True}


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- requests ----

class TextPart(Body):
    type: Literal["text"]
    text: str


class CalledFunction(Body):
    name: str = Field(min_length=1)
    arguments: str = Field(description="The arguments as a JSON string, as the model wrote them.")


class ToolCall(Body):
    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessage(Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = Field(None, description="An assistant turn's calls.")
    tool_call_id: str | None = Field(None, description="The call a `tool` message answers.")
    refusal: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content (only an assistant turn that calls tools may "
                             "leave it out)")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("tool_calls is only allowed on assistant messages")
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise ValueError("a tool message needs tool_call_id (the id of the call it answers), and only a tool "
                             "message may have one")
        return self

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(part.text for part in self.content)

    def turn(self) -> dict:
        """The message as hone's renderer takes it; `developer` is the system role under a newer name."""
        turn = {"role": "system" if self.role == "developer" else self.role, "content": self.text()}
        if self.tool_calls:
            turn["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        if self.tool_call_id is not None:
            turn["tool_call_id"] = self.tool_call_id
        return turn


class FunctionDefinition(Body):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="A JSON Schema for the arguments; calls always "
                                              "match it (constrained decoding).", json_schema_extra=JSON_SCHEMA_VALUE)
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _decodable(cls, value: dict | None) -> dict | None:
        return _without_ref_cycle(value)


class Tool(Body):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(Body):
    name: str


class NamedToolChoice(Body):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaSpec(Body):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    json_schema: dict[str, Any] = Field(alias="schema", description="The JSON Schema replies match.",
                                        json_schema_extra=JSON_SCHEMA_VALUE)
    strict: bool | None = None

    @field_validator("json_schema")
    @classmethod
    def _decodable(cls, value: dict) -> dict:
        return _without_ref_cycle(value)


class ResponseFormat(Body):
    """`text` (free), `json_object` (any JSON object) or `json_schema` (JSON matching `json_schema.schema`)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_when_asked(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError('json_schema is required with type "json_schema", and only allowed with it')
        return self


def _without_ref_cycle(schema: dict | None) -> dict | None:
    if schema is not None and (cycle := ref_cycle(schema)):
        raise ValueError(f"the schema's $ref chain {' -> '.join(cycle)} leads back to itself with no schema in "
                         "between, so no value can match it; point one of them at a real schema")
    return schema


class StreamOptions(Body):
    include_usage: bool = False


class GenerationFields(Body):
    """Fields shared by chat and text completions."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES, description=f"Replies to generate (at most {MAX_CHOICES}).")
    user: str | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    ignore_eos: bool = Field(False, description="Extension (as in vLLM): keep generating past end-of-sequence.")
    index: str | None = Field(None, description="Extension: a retrieval index whose passages are injected.")
    top_k: int | None = Field(None, ge=1, le=50, description="Extension: passages to inject from the index.")

    @field_validator("frequency_penalty", "presence_penalty")
    @classmethod
    def _no_penalties(cls, value: float) -> float:
        if value != 0:
            raise ValueError("penalties are not supported; leave it at 0")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 4 or any(not stop for stop in stops):
            raise ValueError("give at most 4 non-empty stop strings")
        return value

    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def include_usage_in_stream(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def requested_tokens(self) -> int | None:
        return self.max_tokens

    def length_param(self) -> str:
        """The field that sets the reply length, for error messages."""
        return "max_tokens"


class ChatCompletionRequest(GenerationFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _one_length(self) -> ChatCompletionRequest:
        if self.max_tokens is not None and self.max_completion_tokens is not None and \
                self.max_tokens != self.max_completion_tokens:
            raise ValueError("max_tokens and max_completion_tokens disagree; send only one")
        return self

    @model_validator(mode="after")
    def _tools_agree(self) -> ChatCompletionRequest:
        names = [tool.function.name for tool in self.tools or []]
        if len(set(names)) != len(names):
            raise ValueError("tools: two tools have the same name; give each function its own name")
        if self.tool_choice is not None and not self.tools:
            raise ValueError("tool_choice is only allowed when tools are given")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in names:
            raise ValueError(f"tool_choice names the function {self.tool_choice.function.name!r}, which is not in "
                             f"tools ({', '.join(names)})")
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.ignore_eos and self.output_grammar() is not None:
            raise ValueError("ignore_eos cannot be combined with response_format or tools: a constrained reply "
                             "ends where its grammar does")
        self._answered_calls()
        return self

    def _answered_calls(self) -> None:
        """Every tool message answers a call an earlier assistant turn made."""
        called: set[str] = set()
        for i, message in enumerate(self.messages):
            called |= {call.id for call in message.tool_calls or []}
            if message.role == "tool" and message.tool_call_id not in called:
                raise ValueError(f"messages[{i}]: tool_call_id {message.tool_call_id!r} answers no call of an "
                                 "earlier assistant message; give the id of the call it answers")

    def tool_list(self) -> list[dict] | None:
        """The tools in OpenAI form for rendering, or None."""
        return [tool.model_dump(exclude_none=True) for tool in self.tools] if self.tools else None

    def calls_tools(self) -> bool:
        """Whether the reply may contain tool calls (so the server reads them out of its text)."""
        return bool(self.tools) and self.tool_choice != "none"

    def output_grammar(self) -> OutputGrammar | None:
        """What the reply is held to: calls to the tools and/or JSON, or None for free text."""
        kind = self.response_format.type if self.response_format else "text"
        spec = self.response_format.json_schema if kind == "json_schema" else None
        schema = spec.json_schema if spec else {"type": "object"} if kind == "json_object" else None
        choice = self.tool_choice.model_dump() if isinstance(self.tool_choice, NamedToolChoice) else \
            self.tool_choice or "auto"
        return reply_grammar(schema, spec.name if spec else None, self.tool_list(), choice,
                             self.parallel_tool_calls is not False)

    def grammar_param(self) -> str:
        """The request field a grammar error names."""
        return "tools" if self.tools else "response_format"

    def logprobs_wanted(self) -> int | None:
        """Alternatives per token to report (0: only the chosen token's), None without logprobs."""
        return (self.top_logprobs or 0) if self.logprobs else None

    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def length_param(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens else "max_tokens"

    def conversation(self) -> list[dict]:
        """The messages as hone's renderer takes them (role, content, and calls and call ids where given)."""
        return [message.turn() for message in self.messages]


class CompletionRequest(GenerationFields):
    prompt: str | list[str]
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("send one prompt per request")
        return value

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool) -> bool:
        if value:
            raise ValueError("echo is not supported")
        return value

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class LoadAdapterRequest(Body):
    lora_name: str = Field(min_length=1, max_length=128)
    lora_path: str = Field(min_length=1)


class UnloadAdapterRequest(Body):
    lora_name: str = Field(min_length=1)
    lora_int_id: int | None = None  # vLLM accepts it; names are unique here


class FeedbackRequest(Body):
    response_id: str = Field(min_length=1)
    rating: int | None = Field(None, ge=-1, le=5, description="-1/1 thumbs, or 1-5 stars.")
    correction: str | None = Field(None, description="The answer the model should have given.")


# ---- responses ----

class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens)


class Source(BaseModel):
    """A retrieved passage that was put into the prompt (extension)."""

    text: str
    source: str = Field(description="The document, relative to the indexed folder.")
    line: int = Field(description="The line the passage starts on.")
    score: float = Field(description="Cosine similarity to the query.")


def _sources_field():
    return Field(None, exclude_if=lambda sources: sources is None,
                 description="Extension: the retrieved passages injected into the prompt; absent without retrieval.")


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = Field(description="The token's UTF-8 bytes (a character may span tokens).")


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(description="The most likely tokens at this position (top_logprobs).")


class ChoiceLogprobs(BaseModel):
    """Log probabilities of the chosen tokens under the model, before sampling settings and constraints apply."""

    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = Field(None, exclude_if=lambda calls: calls is None)


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChoice]
    usage: Usage
    sources: list[Source] | None = _sources_field()


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: FinishReason | None = Field(description="null until the last chunk of a stream.")


class TextCompletion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionChoice]
    usage: Usage
    sources: list[Source] | None = _sources_field()


class CalledFunctionDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    """A streamed tool call: its index in the reply's calls, and on its first chunk its id, type and name."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: CalledFunctionDelta


class ChunkDelta(BaseModel):
    """New text or tool calls of a streamed reply; the first chunk carries the role, the last one nothing."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    """One `data:` line of a streamed chat completion (the stream ends with `data: [DONE]`)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChunkChoice]
    usage: Usage | None = Field(None, description="With stream_options.include_usage: null on every chunk but a "
                                "last one, which has no choices; absent otherwise.")
    sources: list[Source] | None = _sources_field()


class CompletionChunk(BaseModel):
    """One `data:` line of a streamed text completion (the stream ends with `data: [DONE]`)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionChoice]
    usage: Usage | None = Field(None, description="As in ChatCompletionChunk.")
    sources: list[Source] | None = _sources_field()


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "hone"
    root: str = Field(description="The model's own name (never a path on the server).")
    parent: str | None = Field(description="The base an adapter runs on; null for the base.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class FeedbackResponse(BaseModel):
    object: Literal["feedback"] = "feedback"
    response_id: str
    recorded: bool = True


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model: str = Field(description="The base model's served name.")
    in_flight: int = Field(description="Generation requests being answered.")
    running: int = Field(description="Sequences being decoded.")
    waiting: int = Field(description="Sequences waiting for a batch slot.")
    steps: int = Field(description="Engine steps since start.")
    tokens_generated: int
    adapters_loaded: list[str] = Field(description="Adapters in memory, least recently used first.")
    adapter_merged: str | None = Field(description="The adapter merged into a copy of the base weights, used "
                                       "while it has every running request (merge_single_adapter).")
    max_batch: int


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class ChunkWriter:
    """OpenAI's streaming chunks for one response: `data: {...}` lines, ending with `data: [DONE]`.

    Every field of a chunk is set explicitly and unset ones are left out, so keys appear exactly where OpenAI
    sends them (a delta without content, `usage` only with `include_usage`).
    """

    def __init__(self, response_id: str, model: str, chat: bool, include_usage: bool):
        self.id, self.model, self.chat, self.include_usage = response_id, model, chat, include_usage
        self.created = int(time.time())

    def _chunk(self, choices: list[ChatChunkChoice | CompletionChoice], usage: Usage | None = None,
               sources: list[dict] | None = None) -> str:
        fields = {"id": self.id, "created": self.created, "model": self.model, "system_fingerprint": None,
                  "choices": choices}
        if self.include_usage:
            fields["usage"] = usage
        if sources:
            fields["sources"] = sources
        chunk = ChatCompletionChunk(object="chat.completion.chunk", **fields) if self.chat else \
            CompletionChunk(object="text_completion", **fields)
        return f"data: {chunk.model_dump_json(exclude_unset=True)}\n\n"

    def _choice(self, index: int, text: str | None, finish_reason: FinishReason | None, role: bool = False,
                logprobs: ChoiceLogprobs | None = None,
                calls: list[ToolCallDelta] | None = None) -> ChatChunkChoice | CompletionChoice:
        if not self.chat:
            return CompletionChoice(index=index, text=text or "", logprobs=None, finish_reason=finish_reason)
        delta = ChunkDelta(role="assistant", content="") if role else \
            ChunkDelta(tool_calls=calls) if calls else ChunkDelta(content=text) if text else ChunkDelta()
        return ChatChunkChoice(index=index, delta=delta, logprobs=logprobs, finish_reason=finish_reason)

    def start(self, choices: int = 1) -> str | None:
        """The first chunk of each choice (chat only: the role)."""
        return "".join(self._chunk([self._choice(i, None, None, role=True)]) for i in range(choices)) \
            if self.chat else None

    def text(self, text: str, index: int = 0, logprobs: ChoiceLogprobs | None = None) -> str:
        return self._chunk([self._choice(index, text, None, logprobs=logprobs)])

    def tool_call(self, index: int, call: int, call_id: str, name: str, arguments: str) -> str:
        """A whole tool call of choice `index`, the `call`-th of its reply, in one delta."""
        delta = ToolCallDelta(index=call, id=call_id, type="function",
                              function=CalledFunctionDelta(name=name, arguments=arguments))
        return self._chunk([self._choice(index, None, None, calls=[delta])])

    def finish_choice(self, index: int, finish_reason: FinishReason, sources: list[dict] | None = None,
                      logprobs: ChoiceLogprobs | None = None) -> str:
        return self._chunk([self._choice(index, None, finish_reason, logprobs=logprobs)], sources=sources)

    def end(self, usage: Usage) -> str:
        """The usage chunk (with stream_options.include_usage), then [DONE]."""
        return (self._chunk([], usage=usage) if self.include_usage else "") + "data: [DONE]\n\n"
