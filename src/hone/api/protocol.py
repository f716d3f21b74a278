"""OpenAI-compatible request and response bodies, including the chunks of a streamed (SSE) response.

Request bodies reject unknown fields so a typo is a 400 naming the field, not a silently ignored setting.
hone's extensions (vLLM's `ignore_eos`, `index`/`top_k` for retrieval, `sources` in answers) are marked as such.
Responses keep the exact shapes the official `openai` SDK reads.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

FinishReason = Literal["stop", "length"]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- requests ----

class TextPart(Body):
    type: Literal["text"]
    text: str


class ChatMessage(Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


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
    n: int = 1
    user: str | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    ignore_eos: bool = Field(False, description="Extension (as in vLLM): keep generating past end-of-sequence.")
    index: str | None = Field(None, description="Extension: a retrieval index whose passages are injected.")
    top_k: int | None = Field(None, ge=1, le=50, description="Extension: passages to inject from the index.")

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError("only n=1 is supported; send several requests for several choices")
        return value

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

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool) -> bool:
        if value:
            raise ValueError("logprobs are not supported")
        return value

    @model_validator(mode="after")
    def _one_length(self) -> ChatCompletionRequest:
        if self.max_tokens is not None and self.max_completion_tokens is not None and \
                self.max_tokens != self.max_completion_tokens:
            raise ValueError("max_tokens and max_completion_tokens disagree; send only one")
        return self

    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def length_param(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens else "max_tokens"

    def conversation(self) -> list[dict]:
        """The messages as plain {"role", "content"} turns; `developer` is the system role under a newer name."""
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


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


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
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


class ChunkDelta(BaseModel):
    """New text of a streamed reply; the first chunk carries the role, the last one nothing."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta
    logprobs: None = None
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

    def _choice(self, text: str | None, finish_reason: FinishReason | None,
                role: bool = False) -> ChatChunkChoice | CompletionChoice:
        if not self.chat:
            return CompletionChoice(index=0, text=text or "", logprobs=None, finish_reason=finish_reason)
        delta = ChunkDelta(role="assistant", content="") if role else \
            ChunkDelta(content=text) if text else ChunkDelta()
        return ChatChunkChoice(index=0, delta=delta, logprobs=None, finish_reason=finish_reason)

    def start(self) -> str | None:
        return self._chunk([self._choice(None, None, role=True)]) if self.chat else None

    def text(self, text: str) -> str:
        return self._chunk([self._choice(text, None)])

    def finish(self, finish_reason: FinishReason, usage: Usage, sources: list[dict]) -> str:
        lines = self._chunk([self._choice(None, finish_reason)], sources=sources)
        if self.include_usage:
            lines += self._chunk([], usage=usage)
        return lines + "data: [DONE]\n\n"
