"""The prompt a retrieval-augmented request gets: one home for serving and evaluation, so eval measures what
is served.

Passages are what `RagIndex.search` returns: mappings with "text", "source" (the file inside the documents
folder) and "line"; any other key (such as "score") is not shown to the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

RAG_PREAMBLE = "Use these passages where they help, and cite them as [n]:"

Passages = Sequence[Mapping[str, Any]]


def retrieval_query(messages: Sequence[Mapping[str, Any]]) -> str:
    """The text retrieval searches with: the last user turn (the last turn when no user spoke)."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), messages[-1]["content"])


def passage_context(passages: Passages) -> str:
    """The passages as numbered text citing their source and line, after the instruction to use them."""
    return RAG_PREAMBLE + "\n\n" + "\n\n".join(
        f"[{n}] ({p['source']}:{p['line']}) {p['text']}" for n, p in enumerate(passages, start=1))


def rag_messages(messages: list[dict], passages: Passages) -> list[dict]:
    """The conversation with the passages at the end of its system message; one is added when there is none
    (many chat templates accept a single system message only). No passages: the conversation unchanged."""
    if not passages:
        return messages
    context = passage_context(passages)
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": messages[0]["content"] + "\n\n" + context}, *messages[1:]]
    return [{"role": "system", "content": context}, *messages]


def rag_text(prompt: str, passages: Passages) -> str:
    """A plain-text (completions) prompt with the passages before it."""
    return passage_context(passages) + "\n\n" + prompt if passages else prompt
