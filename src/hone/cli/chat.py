"""`hone chat --model NAME|RUN_DIR "prompt"`."""

from __future__ import annotations

from typing import Annotated

import typer

from hone.cli.output import emit_json


def chat(
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    model: Annotated[str, typer.Option(
        help="Catalog name, Hugging Face model folder, .gguf file, or a `hone train` run directory."
    )] = "smollm2-135m-instruct",
    system: Annotated[str | None, typer.Option(help="System message sent before the prompt.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Reply length cap.")] = 256,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Get one greedy reply from a base model or a fine-tuned run; the text streams as it is generated."""
    from hone.eval.generate import chat_reply
    from hone.models.finetuned import load_for_inference

    loaded, tokenizer, _ = load_for_inference(model)
    messages = [{"role": "user", "content": prompt}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    reply = chat_reply(loaded, tokenizer, messages, max_new_tokens=max_new_tokens, stream=not as_json)
    if as_json:
        emit_json({"model": model, "reply": reply.text, "tokens": reply.tokens,
                   "seconds": round(reply.seconds, 3)})
