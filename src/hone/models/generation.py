"""Where generation stops: one rule for the serving engine, `hone eval`, `hone chat` and exported models."""

from __future__ import annotations


def stop_token_ids(tokenizer, generation_config=None) -> tuple[int, ...]:
    """Every token id that ends a reply: the generation config's EOS ids (a model may list several, e.g.
    end-of-text and end-of-turn), then the tokenizer's EOS (the chat template's end of turn), without repeats.

    `generation_config` is a transformers GenerationConfig (`model.generation_config`), or None.
    """
    configured = getattr(generation_config, "eos_token_id", None)
    ids = list(configured) if isinstance(configured, list | tuple) else [] if configured is None else [configured]
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return tuple(dict.fromkeys(int(i) for i in ids))
