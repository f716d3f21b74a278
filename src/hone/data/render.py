"""Render a conversation with the model's own chat template and mark which tokens are trained.

Only assistant turns (with weight 1) are trained. The trained character spans are found by rendering
growing prefixes of the conversation; the full text is tokenized once and each token is trained when
its characters fall inside a trained span, so BPE merges across turn boundaries cannot shift the mask.
"""

from __future__ import annotations

from dataclasses import dataclass

from hone.errors import HoneError


@dataclass
class RenderedExample:
    """One tokenized conversation: token ids and, per token, whether the loss is computed on it."""

    input_ids: list[int]
    trained: list[bool]
    text: str

    @property
    def num_trained(self) -> int:
        return sum(self.trained)

    def __len__(self) -> int:
        return len(self.input_ids)


def _template(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    return tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=add_generation_prompt)


def trained_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans of every trained assistant turn (through its end token)."""
    text = _template(tokenizer, messages, add_generation_prompt=False)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        before = _template(tokenizer, messages[:index], add_generation_prompt=True) if index else ""
        through = _template(tokenizer, messages[: index + 1], add_generation_prompt=False)
        if not text.startswith(through) or not through.startswith(before):
            raise HoneError(
                "the model's chat template does not render conversations incrementally, so the assistant "
                "tokens cannot be located",
                hint="use a model whose chat template renders each turn after the previous ones (ChatML, "
                "Llama 3, Mistral and most instruct models do)",
            )
        spans.append((len(before), len(through)))
    return text, spans


def render_chat(tokenizer, messages: list[dict]) -> RenderedExample:
    """Tokenize `messages` with the chat template; `trained[i]` says whether token i is a target."""
    text, spans = trained_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    trained = []
    for start, end in encoded["offset_mapping"]:
        trained.append(any(lo <= start and end <= hi and end > start for lo, hi in spans))
    return RenderedExample(input_ids=list(encoded["input_ids"]), trained=trained, text=text)


def render_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of the conversation so far followed by the assistant header, ready for generation."""
    text = _template(tokenizer, messages, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def count_tokens(tokenizer, messages: list[dict]) -> int:
    """Number of tokens of the full conversation once the chat template is applied."""
    text = _template(tokenizer, messages, add_generation_prompt=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])
