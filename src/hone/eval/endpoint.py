"""Replies from any OpenAI-compatible endpoint, as an external baseline next to hone's own candidates.

Requests run a few at a time; a request that fails is retried once and then counted, never scored as
an empty reply. An endpoint that cannot be reached at all stops after the first request. A test example's tools
and a candidate's response_format go into each request; tool calls come back written in hone's default format, so
they are scored as a local model's are.
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from tqdm import tqdm

from hone.data.render import render_tool_call
from hone.eval.generate import Generation

ATTEMPTS = 2


def make_client(url: str, api_key_env: str | None, timeout_s: float):
    """An `openai.OpenAI` client for `url`; the key comes from the named environment variable."""
    import openai

    key = os.environ.get(api_key_env) if api_key_env else None
    # Local servers (vLLM, llama.cpp) ignore the key, but the SDK insists on one.
    return openai.OpenAI(base_url=url, api_key=key or "none", timeout=timeout_s, max_retries=0)


def request_fields(tools: list[dict] | None, parallel_tool_calls: bool | None, response_format,
                   tool_choice: str = "auto") -> dict:
    """What a request adds to the conversation: the example's tools (and its parallel_tool_calls when the file
    says) with the candidate's tool_choice, and its response_format (a ResponseFormat config), in OpenAI's shape."""
    fields: dict = {}
    if tools:
        fields |= {"tools": tools, "tool_choice": tool_choice}
        if parallel_tool_calls is not None:
            fields["parallel_tool_calls"] = parallel_tool_calls
    if response_format is not None:
        fields["response_format"] = response_format.model_dump(mode="json", by_alias=True, exclude_none=True)
    return fields


def reply_text(message) -> str:
    """An OpenAI reply message as text: its content, then each tool call in hone's default format, so endpoint
    replies are scored like local ones. Arguments that are not a JSON object are kept as written (and so count as
    a call that does not parse)."""
    parts = [message.content.strip()] if message.content and message.content.strip() else []
    for call in message.tool_calls or []:
        try:
            parts.append(render_tool_call({"function": {"name": call.function.name,
                                                        "arguments": call.function.arguments}}))
        except (ValueError, TypeError):
            parts.append(f'<tool_call>\n{{"name": {json.dumps(call.function.name)}, "arguments": '
                         f"{call.function.arguments}}}\n</tool_call>")
    return "\n".join(parts)


def _ask(client, model: str, messages: list[dict], max_tokens: int, fields: dict | None = None) -> Generation:
    began = time.perf_counter()
    response = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                              temperature=0, **(fields or {}))
    text = reply_text(response.choices[0].message)
    usage = response.usage
    tokens = usage.completion_tokens if usage and usage.completion_tokens is not None else len(text.split())
    return Generation(text=text, tokens=tokens, seconds=time.perf_counter() - began)


def _ask_with_retry(client, model: str, messages: list[dict], max_tokens: int,
                    fields: dict | None = None) -> Generation | str:
    """The reply, or the error message of the last failed attempt."""
    import openai

    error: Exception | None = None
    for _ in range(ATTEMPTS):
        try:
            return _ask(client, model, messages, max_tokens, fields)
        except (openai.APIError, IndexError, AttributeError) as caught:
            error = caught
            if isinstance(caught, openai.APIConnectionError):
                break  # a refused connection will not be accepted a moment later
    return f"{type(error).__name__}: {error}"


def endpoint_replies(settings, prompts: list[list[dict]], max_tokens: int, label: str, show_progress: bool = True,
                     fields: list[dict] | None = None) -> tuple[list[Generation | None], list[dict], str | None]:
    """Replies of the endpoint in `settings` (EndpointSettings) to each conversation, in input order; fields[i]
    (`request_fields`) goes into request i.

    Returns (replies with None where a request failed, [{index, error}] failures, a message when the
    endpoint could not be reached at all).
    """
    client = make_client(settings.url, settings.api_key_env, settings.timeout_s)
    fields = fields or [{}] * len(prompts)
    first = _ask_with_retry(client, settings.model, prompts[0], max_tokens, fields[0]) if prompts else None
    if isinstance(first, str):
        return [None] * len(prompts), [{"index": 0, "error": first}], (
            f"endpoint {settings.url} (model {settings.model}) failed: {first}; check that it is running and "
            "that url ends with /v1")
    results: list[Generation | str | None] = [first] + [None] * (len(prompts) - 1)
    with tqdm(total=len(prompts), initial=1, desc=label, unit="ex", file=sys.stderr,
              disable=not show_progress) as bar, ThreadPoolExecutor(settings.concurrency) as pool:
        futures = {pool.submit(_ask_with_retry, client, settings.model, prompts[i], max_tokens, fields[i]): i
                   for i in range(1, len(prompts))}
        for future, index in futures.items():
            results[index] = future.result()
            bar.update(1)
    failures = [{"index": i, "error": r} for i, r in enumerate(results) if isinstance(r, str)]
    return [None if isinstance(r, str) else r for r in results], failures, None
