"""Replay against forgetting: general examples mixed into the training split.

Fine-tuning on narrow data makes a model lose general skills; mixing ~10% general data back in keeps
them. The source is a file of general examples, or `self`: the base model's own greedy answers to a
built-in, varied set of general prompts (writing, reasoning, question answering, coding, summarising),
so the adapter is pulled back towards what the base model already does. Generated answers are cached
per model fingerprint under $HONE_HOME/replay, so preparing (or training) again is fast and gives the same
data. `hone data prepare` mixes replay into a dataset version; `hone train` mixes it in by default.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from hone.data.curate.steps import StepReport
from hone.data.formats import Example, load_chat_examples
from hone.errors import HoneError
from hone.home import hone_home

SELF = "self"
BUILT_IN_PROMPTS = "general_prompts.jsonl"


class ReplaySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fraction: float = Field(0.1, gt=0, lt=1, description="Share of the final training split that is replay.")
    source: str = Field(SELF, description="'self' (the base model answers built-in general prompts) or a "
                        "data file of general examples.")
    max_new_tokens: int = Field(384, ge=16, description="self: longest generated answer; longer ones are "
                                "cut off and therefore not used.")
    batch_size: int = Field(16, ge=1, description="self: prompts generated together.")


def replay_count(train_count: int, fraction: float) -> int:
    """How many replay examples make up `fraction` of the training split after mixing."""
    return round(train_count * fraction / (1 - fraction))


def general_prompts() -> list[dict]:
    """The built-in general prompts: {"prompt", "category"} records."""
    text = resources.files("hone.data.curate").joinpath(BUILT_IN_PROMPTS).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _pick_prompts(count: int, seed: int) -> list[dict]:
    """`count` prompts, seeded, taking the categories in turn so the mix stays varied."""
    by_category: dict[str, list[dict]] = {}
    for record in general_prompts():
        by_category.setdefault(record["category"], []).append(record)
    rng = random.Random(seed)
    queues = [rng.sample(records, len(records)) for _, records in sorted(by_category.items())]
    picked = []
    while len(picked) < count and any(queues):
        for queue in queues:
            if queue and len(picked) < count:
                picked.append(queue.pop())
    return picked


def _cache_file(model: str, max_new_tokens: int) -> Path:
    from hone.models import fingerprint

    folder = hone_home() / "replay"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{fingerprint(model)[:16]}-{max_new_tokens}.jsonl"


def _read_cache(cache: Path) -> dict[str, str | None]:
    if not cache.is_file():
        return {}
    return {r["prompt"]: r["answer"] for r in map(json.loads, cache.read_text(encoding="utf-8").splitlines()) if r}


def _write_cache(cache: Path, answers: dict[str, str | None]) -> None:
    """Merge `answers` into the cache file, replacing it in one step so a concurrent reader never sees half."""
    known = _read_cache(cache) | answers  # another run may have added answers meanwhile
    lines = [json.dumps({"prompt": p, "answer": a}, ensure_ascii=False) for p, a in sorted(known.items())]
    handle, temporary = tempfile.mkstemp(prefix=f".{cache.name}.", dir=cache.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        file.write("\n".join(lines) + "\n")
    os.replace(temporary, cache)


def _answers(model: str, prompts: list[str], settings: ReplaySettings, report: StepReport,
             show_progress: bool) -> dict[str, str | None]:
    """The base model's greedy answer to each prompt (None when it was cut off), cached per model."""
    cache = _cache_file(model, settings.max_new_tokens)
    known = _read_cache(cache)
    missing = [p for p in prompts if p not in known]
    report.count("answers_cached", len(prompts) - len(missing))
    if missing:
        report.count("answers_generated", len(missing))
        generated = _generate(model, missing, settings, show_progress)
        _write_cache(cache, generated)
        known.update(generated)
    return {p: known[p] for p in prompts}


def _generate(model: str, prompts: list[str], settings: ReplaySettings,
              show_progress: bool) -> dict[str, str | None]:
    """Greedy answers in batches, on the GPU when there is one, the weights in bf16 where that runs fast."""
    from hone.data.render import render_prompt
    from hone.eval.generate import generate_replies
    from hone.models import frozen_dtype, load_model, load_tokenizer
    from hone.models.finetuned import default_device

    device = default_device()
    tokenizer = load_tokenizer(model)
    loaded = load_model(model, dtype=frozen_dtype(device), device=device)
    rendered = [render_prompt(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    replies = generate_replies(loaded, tokenizer, rendered, settings.max_new_tokens, settings.batch_size,
                               label="replay: base model answers", show_progress=show_progress)
    return {p: (None if r.tokens >= settings.max_new_tokens else r.text.strip())
            for p, r in zip(prompts, replies, strict=True)}


def _self_examples(count: int, model: str, seed: int, settings: ReplaySettings, report: StepReport,
                   fits: Callable[[Example], bool], show_progress: bool) -> list[Example]:
    """Answers to `count` general prompts; a cut-off answer (or one that does not fit) is replaced by the next
    prompt in the order, trying at most twice as many prompts as needed."""
    queue = _pick_prompts(min(2 * count, len(general_prompts())), seed)
    examples: list[Example] = []
    while len(examples) < count and queue:
        batch, queue = queue[: count - len(examples)], queue[count - len(examples):]
        answers = _answers(model, [r["prompt"] for r in batch], settings, report, show_progress)
        for record in batch:
            answer = answers[record["prompt"]]
            if not answer:
                report.count("skipped_cut_off_or_empty")
                continue
            messages = [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": answer}]
            example = Example(messages=messages, source=f"replay:self:{record['category']}",
                              line=len(examples) + 1, format="replay")
            if not fits(example):
                report.count("skipped_does_not_fit")
                continue
            examples.append(example)
    if len(examples) < count:
        report.count("short_of_target", count - len(examples))
    return examples


def _file_examples(count: int, path: Path, seed: int, report: StepReport,
                   fits: Callable[[Example], bool]) -> list[Example]:
    if not path.is_file():
        raise HoneError(f"replay source {path} does not exist", hint="set replay.source to a data file or 'self'")
    loaded = load_chat_examples(path)
    pool = [example for example in loaded if fits(example)]
    if len(pool) < len(loaded):
        report.count("skipped_does_not_fit", len(loaded) - len(pool))
    if count > len(pool):
        report.count("short_of_target", count - len(pool))
    return random.Random(seed).sample(pool, min(count, len(pool)))


def replay_examples(settings: ReplaySettings, train_count: int, model: str, seed: int = 0, *,
                    fits: Callable[[Example], bool] | None = None,
                    show_progress: bool = True) -> tuple[list[Example], StepReport]:
    """General examples to add to a training split of `train_count` examples. `fits(example)` says whether an
    example can be used (e.g. is short enough to train on); those that cannot are replaced by others."""
    target = replay_count(train_count, settings.fraction)
    report = StepReport("replay", params={**settings.model_dump(), "model": model, "target": target})
    fits = fits or (lambda _example: True)
    if settings.source == SELF:
        examples = _self_examples(target, model, seed, settings, report, fits, show_progress)
    else:
        examples = _file_examples(target, Path(settings.source), seed, report, fits)
    report.count("added", len(examples))
    return examples, report


def replay_fingerprint(examples: list[Example]) -> str:
    """sha256 of the replay examples' conversations, in order: which general data a run trained on."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps(example.messages, ensure_ascii=False, sort_keys=True).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()
