"""Replay against forgetting: general examples mixed into the training split.

Fine-tuning on narrow data makes a model lose general skills; mixing ~10% general data back in keeps
them. The source is a file of general examples, or `self`: the base model's own greedy answers to a
built-in, varied set of general prompts (writing, reasoning, question answering, coding, summarising),
so the adapter is pulled back towards what the base model already does. Generated answers are cached
per model fingerprint under $HONE_HOME/replay, so preparing again is fast and gives the same data.
"""

from __future__ import annotations

import json
import random
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


def _answers(model: str, prompts: list[str], settings: ReplaySettings, report: StepReport) -> dict[str, str | None]:
    """The base model's greedy answer to each prompt (None when it was cut off), cached per model."""
    cache = _cache_file(model, settings.max_new_tokens)
    known = {}
    if cache.is_file():
        known = {r["prompt"]: r["answer"] for r in map(json.loads, cache.read_text().splitlines()) if r}
    missing = [p for p in prompts if p not in known]
    report.count("answers_cached", len(prompts) - len(missing))
    if missing:
        report.count("answers_generated", len(missing))
        known.update(_generate(model, missing, settings))
        lines = [json.dumps({"prompt": p, "answer": a}, ensure_ascii=False) for p, a in sorted(known.items())]
        cache.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {p: known[p] for p in prompts}


def _generate(model: str, prompts: list[str], settings: ReplaySettings) -> dict[str, str | None]:
    from hone.data.render import render_prompt
    from hone.eval.generate import generate_replies
    from hone.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(model)
    loaded = load_model(model)
    rendered = [render_prompt(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    replies = generate_replies(loaded, tokenizer, rendered, settings.max_new_tokens, settings.batch_size,
                               label="replay: base model answers")
    return {p: (None if r.tokens >= settings.max_new_tokens else r.text.strip())
            for p, r in zip(prompts, replies, strict=True)}


def _self_examples(count: int, model: str, seed: int, settings: ReplaySettings,
                   report: StepReport) -> list[Example]:
    """Answers to `count` general prompts; a cut-off answer is replaced by the next prompt in the order,
    trying at most twice as many prompts as needed."""
    queue = _pick_prompts(min(2 * count, len(general_prompts())), seed)
    examples: list[Example] = []
    while len(examples) < count and queue:
        batch, queue = queue[: count - len(examples)], queue[count - len(examples):]
        answers = _answers(model, [r["prompt"] for r in batch], settings, report)
        for record in batch:
            answer = answers[record["prompt"]]
            if not answer:
                report.count("skipped_cut_off_or_empty")
                continue
            messages = [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": answer}]
            examples.append(Example(messages=messages, source=f"replay:self:{record['category']}",
                                    line=len(examples) + 1, format="replay"))
    if len(examples) < count:
        report.count("short_of_target", count - len(examples))
    return examples


def _file_examples(count: int, path: Path, seed: int, report: StepReport) -> list[Example]:
    if not path.is_file():
        raise HoneError(f"replay source {path} does not exist", hint="set replay.source to a data file or 'self'")
    pool = load_chat_examples(path)
    if count > len(pool):
        report.count("short_of_target", count - len(pool))
    return random.Random(seed).sample(pool, min(count, len(pool)))


def replay_examples(settings: ReplaySettings, train_count: int, model: str,
                    seed: int = 0) -> tuple[list[Example], StepReport]:
    """General examples to add to a training split of `train_count` examples."""
    target = replay_count(train_count, settings.fraction)
    report = StepReport("replay", params={**settings.model_dump(), "model": model, "target": target})
    if settings.source == SELF:
        examples = _self_examples(target, model, seed, settings, report)
    else:
        examples = _file_examples(target, Path(settings.source), seed, report)
    report.count("added", len(examples))
    return examples, report
