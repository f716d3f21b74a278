"""`hone distill generate`: the teacher writes new training examples from a handful of seeds.

Step one varies the inputs: for each combination of topic x persona x difficulty (shuffled with `seed`, cycling when
`count` asks for more), the teacher writes one new user input in the style of the seeds' user turns. The inputs are
kept diverse: exact duplicates, duplicates of a seed, near duplicates (MinHash Jaccard of word shingles) and inputs
too close in meaning (cosine similarity of sentence embeddings, to a kept input or a seed) are dropped, each counted
by reason; while fewer than `count` remain, up to `rounds` more rounds ask for the missing ones. Step two is
`hone distill label` on the kept inputs: the teacher answers them under the task's system prompt and every filter,
pick, judge and dataset step applies. A diversity report (distinct n-grams, embedding spread, label balance against
the seeds) goes to diversity.json. Both steps cache the teacher's replies in the output folder (inputs.jsonl and
answers.jsonl), so a rerun asks nothing twice.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from hone.data.curate.dedup import dedup_against, exact_dedup, near_dedup
from hone.data.curate.steps import Removal
from hone.data.formats import Example
from hone.distill.filters import FilterSettings, label_shares
from hone.distill.label import (
    LABELED,
    SUMMARY,
    TeacherTask,
    answer_prompts,
    read_prompts_with_answers,
    resolve_task_paths,
)
from hone.distill.teacher import Answer, AnswerCache, Teacher, request_key
from hone.errors import HoneError
from hone.retrieval.embeddings import BUNDLED_NAME, Embedder, load_embedder

INPUTS, DROPPED, DIVERSITY = "inputs.jsonl", "inputs_dropped.jsonl", "diversity.json"
SHOWN_SEEDS = 5  # seed inputs shown per request: enough to show the style, few enough to keep requests short
DEFAULT_PERSONAS = ["a new customer", "an expert user", "a non-native English speaker", "a frustrated user in a hurry"]
WRITER_SYSTEM = ("You write the messages users send to an assistant, as training data for it. Reply with the "
                 "message only: no quotes, no label, no explanation.")
_LABEL_PREFIX = re.compile(r"^(?:\*\*)?(?:new\s+|user\s+)?(?:input|message|question)(?:\*\*)?\s*:(?:\*\*)?\s*", re.I)
_QUOTES = {'"': '"', "'": "'", "“": "”", "«": "»", "`": "`"}
_WORD = re.compile(r"\w+")
_REPEATS = re.compile(r"(\S+):(\d+)$")


class DiversitySettings(BaseModel):
    """When a generated input is too close to another (or to a seed) to keep."""

    model_config = ConfigDict(extra="forbid")

    near_duplicate_threshold: float = Field(0.7, gt=0, le=1, description="Dropped at this Jaccard similarity of "
                                            "word shingles (MinHash) to an earlier input or a seed.")
    shingle_words: int = Field(3, ge=1, le=10, description="Words per shingle (inputs are short: 3 catches a "
                               "changed word or two).")
    embedding_threshold: float = Field(0.9, gt=0, le=1, description="Dropped at this cosine similarity of "
                                       "sentence embeddings to a kept input or a seed.")


class GenerateConfig(TeacherTask):
    """What `hone distill generate CONFIG.yaml` reads (paths relative to the config file)."""

    seeds: Path = Field(description="Chat JSONL of seed examples, each ending with the assistant's answer.")
    topics: list[str] | Path | None = Field(None, description="Topics to write about: a list, or a text file with "
                                            "one per line (default: whatever the seeds cover).")
    personas: list[str] = Field(default_factory=lambda: list(DEFAULT_PERSONAS), min_length=1,
                                description="Who writes each input.")
    difficulties: list[str] = Field(default_factory=lambda: ["easy", "medium", "hard"], min_length=1)
    count: int = Field(ge=1, le=100_000, description="How many new inputs to aim for.")
    seed: int = Field(0, description="Shuffles the combinations of topic, persona and difficulty.")
    diversity: DiversitySettings = DiversitySettings()
    embedder: str | None = Field(None, description="Sentence embedding model for the similarity check: a local "
                                 "sentence-transformers folder (default: the bundled all-MiniLM-L6-v2).")
    rounds: int = Field(3, ge=0, le=20, description="How many times to ask again for the inputs the dedup dropped.")
    seeds_as_examples: bool = Field(True, description="With no `examples:`, the seeds go before every prompt as "
                                    "reference examples when the teacher answers.")


def load_generate_config(path: Path) -> GenerateConfig:
    """Read a `hone distill generate` YAML; relative paths are taken relative to the file, unknown keys refused."""
    from hone.settings import read_yaml_mapping, validate

    raw = read_yaml_mapping(path, "distill generate config")
    config = validate(GenerateConfig, raw, str(path), "distill generate config")
    resolve_generate_paths(config, path)
    resolve_task_paths(config, path)
    return config


def resolve_generate_paths(config: GenerateConfig, path: Path) -> None:
    """Take the seeds, topics and embedder paths relative to the config file."""
    from hone.settings import resolve_relative

    config.seeds = resolve_relative(config.seeds, path)
    if isinstance(config.topics, Path):
        config.topics = resolve_relative(config.topics, path)
    if config.embedder is not None and config.embedder.lower() != BUNDLED_NAME.lower():
        config.embedder = str(resolve_relative(Path(config.embedder), path))


def read_seeds(path: Path) -> list[list[dict]]:
    """The seed examples, each a conversation with a user turn and ending with the assistant's answer."""
    seeds = read_prompts_with_answers(path, what="seed", setting="seeds")
    for number, seed in enumerate(seeds, 1):
        if not any(m["role"] == "user" for m in seed):
            raise HoneError(f"{path}: seed {number} has no user turn", hint="each seed is a user input and its answer")
    if not seeds:
        raise HoneError(f"seeds file {path} has no examples", hint="give a few chat examples to learn the style from")
    return seeds


def read_topics(topics: list[str] | Path | None) -> list[str | None]:
    """The topics to write about (a file: one per line, blank lines skipped); [None] when none are given."""
    if topics is None:
        return [None]
    if isinstance(topics, Path):
        if not topics.is_file():
            raise HoneError(f"topics file {topics} does not exist", hint="set `topics:` to a list or a text file")
        topics = [line.strip() for line in topics.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not topics:
        raise HoneError("`topics` is empty", hint="list some topics, or leave `topics` out to use the seeds' own")
    return list(topics)


def seed_input(seed: list[dict]) -> str:
    """A seed's user input: its last user turn."""
    return next(m["content"] for m in reversed(seed) if m["role"] == "user")


@dataclass(frozen=True)
class Combination:
    """What one new input is about, who writes it, how hard it is; `variant` counts repeats of the same three."""

    topic: str | None
    persona: str
    difficulty: str
    variant: int = 0

    def lineage(self) -> dict:
        """How the input was asked for, as it goes into the example's `metadata.distill`."""
        return {"topic": self.topic, "persona": self.persona, "difficulty": self.difficulty, "variant": self.variant}


def combinations(config: GenerateConfig) -> list[Combination]:
    """Every topic x persona x difficulty, shuffled with the config's seed."""
    every = [Combination(topic, persona, difficulty) for topic, persona, difficulty
             in itertools.product(read_topics(config.topics), config.personas, config.difficulties)]
    random.Random(config.seed).shuffle(every)
    return every


def planned(shuffled: list[Combination], start: int, how_many: int) -> list[Combination]:
    """Requests start..start+how_many of the plan that cycles through the combinations (the n-th cycle is variant
    n, so its requests differ from the earlier cycles' and are not answered from the cache)."""
    return [replace(shuffled[i % len(shuffled)], variant=i // len(shuffled)) for i in range(start, start + how_many)]


def input_request(combination: Combination, seed_inputs: list[str], index: int, system: str | None) -> list[dict]:
    """The request for one new input: a few seed inputs (rotated by the request's index) and what to write."""
    shown = [seed_inputs[(index + k) % len(seed_inputs)] for k in range(min(SHOWN_SEEDS, len(seed_inputs)))]
    told = f"The assistant was told: {system}\n\n" if system else ""
    lines = [f"{told}Users send messages like these to the assistant:", "",
             *[f"<message>\n{text}\n</message>" for text in shown], "",
             "Write ONE new message in the same style.",
             f"Topic: {combination.topic or 'any topic these messages cover'}",
             f"Written by: {combination.persona}", f"Difficulty: {combination.difficulty}"]
    if combination.variant:
        lines.append(f"Variant: {combination.variant + 1} (make it unlike the earlier messages on this)")
    lines.append("Reply with the message only.")
    return [{"role": "system", "content": WRITER_SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def clean_input(reply: str) -> str:
    """The input alone: without an "Input:" label or the quotes around it."""
    text = reply.strip()
    for _ in range(2):  # the label may stand outside the quotes or inside them
        text = _LABEL_PREFIX.sub("", text, count=1).strip()
        while len(text) >= 2 and _QUOTES.get(text[0]) == text[-1] and text[-1] not in text[1:-1]:
            text = text[1:-1].strip()
    return text


@dataclass
class Asked:
    """One request for a new input and what came of it: the input, or why it failed (neither: not asked)."""

    combination: Combination
    request: list[dict]
    key: str
    text: str | None = None
    failure: str | None = None

    @property
    def not_asked(self) -> bool:
        return self.text is None and self.failure is None


def ask_for_inputs(teacher: Teacher, asked: list[Asked], show_progress: bool) -> None:
    """Have the teacher write the inputs `asked` requests, `concurrency` at a time; fills in text or failure."""
    with tqdm(total=len(asked), desc="inputs", unit="input", file=sys.stderr, disable=not show_progress) as bar:
        replies = teacher.answer_all([a.request for a in asked], on_done=lambda: bar.update(1))
    for one, (reply,) in zip(asked, replies, strict=True):
        if isinstance(reply, Answer):
            one.text = clean_input(reply.text) or None
            one.failure = None if one.text else "the teacher's reply was empty"
        else:
            one.failure = reply  # the reason it failed after retries, or None: the budget left it unasked


@dataclass
class Deduplicated:
    """The inputs kept, their embeddings, and every dropped input with its reason."""

    kept: list[Asked]
    vectors: np.ndarray
    dropped: list[dict]


def keep_diverse(asked: list[Asked], seed_inputs: list[str], seed_vectors: np.ndarray, config: GenerateConfig,
                 embedder: Embedder) -> Deduplicated:
    """Drop, in this order, exact duplicates, duplicates of a seed (exact or near), near duplicates of an earlier
    input, and inputs too close in meaning to a kept input or a seed; the first of a group is kept."""
    settings = config.diversity
    written = [a for a in asked if a.text is not None]
    examples = [Example([{"role": "user", "content": a.text}], "generated", i + 1, "chat")
                for i, a in enumerate(written)]
    seeds = [Example([{"role": "user", "content": text}], config.seeds.name, i + 1, "chat")
             for i, text in enumerate(seed_inputs)]
    removed: list[Removal] = []
    remaining, report = exact_dedup(examples)
    removed += report.removed
    remaining, report = dedup_against(remaining, seeds, settings.near_duplicate_threshold, settings.shingle_words)
    removed += report.removed
    remaining, report = near_dedup(remaining, settings.near_duplicate_threshold, settings.shingle_words)
    removed += report.removed
    kept, vectors, similar = _distinct_meanings(remaining, seed_vectors, config.seeds.name,
                                                settings.embedding_threshold, embedder)
    removed += similar
    reasons = {"exact_duplicate": "exact_duplicate", "duplicate_of_existing": "seed_duplicate",
               "near_duplicate_of_existing": "seed_duplicate", "near_duplicate": "near_duplicate",
               "similar_meaning": "similar_meaning"}
    texts = {"generated": [a.text for a in written], config.seeds.name: seed_inputs}
    dropped = [{"input": written[r.line - 1].text, "reason": reasons[r.reason], "detail": r.detail,
                "repeats": _repeated_text(r.detail, texts), **written[r.line - 1].combination.lineage()}
               for r in sorted(removed, key=lambda r: r.line)]
    return Deduplicated([written[e.line - 1] for e in kept], vectors, dropped)


def _repeated_text(detail: str, texts: dict[str, list[str]]) -> str | None:
    """The text a removal's detail points at: the steps end it with SOURCE:NUMBER."""
    found = _REPEATS.search(detail)
    if found is None or found[1] not in texts:
        return None
    return texts[found[1]][int(found[2]) - 1]


def _distinct_meanings(examples: list[Example], seeds: np.ndarray, seeds_name: str, threshold: float,
                       embedder: Embedder) -> tuple[list[Example], np.ndarray, list[Removal]]:
    """Keep each input whose cosine similarity to every seed and every input kept before it is below threshold."""
    inputs = embedder.encode([e.messages[0]["content"] for e in examples])  # unit length: a dot product is the cosine
    kept: list[int] = []
    removed = []
    for i, example in enumerate(examples):
        to_seeds = seeds @ inputs[i]
        to_kept = inputs[kept] @ inputs[i]
        closest = max(float(to_seeds.max(initial=-1.0)), float(to_kept.max(initial=-1.0)))
        if closest < threshold:
            kept.append(i)
            continue
        if float(to_seeds.max(initial=-1.0)) == closest:
            near = f"{seeds_name}:{int(to_seeds.argmax()) + 1}"
        else:
            near = f"generated:{examples[kept[int(to_kept.argmax())]].line}"
        removed.append(Removal(example.source, example.line, "similar_meaning", f"cosine {closest:.2f} to {near}"))
    return [examples[i] for i in kept], inputs[kept], removed


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    """Distinct n-grams / all n-grams of the texts' case-folded words (n-grams do not cross texts); None if none."""
    grams = [tuple(words[i:i + n]) for words in (_WORD.findall(t.casefold()) for t in texts)
             for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def embedding_spread(vectors: np.ndarray) -> float | None:
    """Mean cosine distance (1 - cosine) over all pairs of unit vectors; None for fewer than two."""
    count = len(vectors)
    if count < 2:
        return None
    similarities = vectors @ vectors.T
    pairs = similarities[np.triu_indices(count, k=1)]
    return float(np.mean(1.0 - pairs))


def total_variation(first: dict[str, float], second: dict[str, float]) -> float:
    """Total variation distance of two label distributions: half the summed absolute differences (0 same, 1
    disjoint)."""
    return 0.5 * sum(abs(first.get(k, 0.0) - second.get(k, 0.0)) for k in first.keys() | second.keys())


def label_balance(seeds: list[list[dict]], labeled: Path, filters: FilterSettings) -> dict | None:
    """The seeds' label shares next to the generated examples', and their total variation distance."""
    rows = [json.loads(line) for line in labeled.read_text(encoding="utf-8").splitlines()] \
        if labeled.is_file() else []
    generated = label_shares([row["messages"][-1]["content"] for row in rows], filters) if rows else {}
    ours = label_shares([seed[-1]["content"] for seed in seeds], filters)
    return {"seeds": ours, "generated": generated,
            "total_variation": round(total_variation(ours, generated), 6) if generated else None}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def diversity_report(kept: Deduplicated, seed_inputs: list[str], seed_vectors: np.ndarray) -> dict:
    """Distinct-1, distinct-2 and embedding spread of the kept inputs, with the seeds' for comparison."""
    texts = [a.text for a in kept.kept]
    return {"inputs": {"distinct_1": _rounded(distinct_n(texts, 1)), "distinct_2": _rounded(distinct_n(texts, 2)),
                       "embedding_spread": _rounded(embedding_spread(kept.vectors))},
            "seeds": {"distinct_1": _rounded(distinct_n(seed_inputs, 1)),
                      "distinct_2": _rounded(distinct_n(seed_inputs, 2)),
                      "embedding_spread": _rounded(embedding_spread(seed_vectors))}}


def input_counts(asked: list[Asked], kept: Deduplicated) -> dict:
    """How many inputs were asked for, written, dropped (by reason) and kept."""
    dropped = dict.fromkeys(["exact_duplicate", "seed_duplicate", "near_duplicate", "similar_meaning"], 0)
    dropped.update(Counter(d["reason"] for d in kept.dropped))
    dropped["failed"] = sum(a.failure is not None for a in asked)
    dropped["not_asked"] = sum(a.not_asked for a in asked)
    return {"asked": len(asked), "generated": sum(a.text is not None for a in asked), "dropped": dropped,
            "kept": len(kept.kept)}


def vary_inputs(config: GenerateConfig, seed_inputs: list[str], seed_vectors: np.ndarray, embedder: Embedder,
                show_progress: bool) -> tuple[list[Asked], Deduplicated, Teacher, int]:
    """Step one: ask for `count` new inputs and keep the diverse ones; ask again for the missing ones, at most
    `rounds` times (and not after the token budget ran out). Returns every request, the kept inputs, the teacher
    and the rounds run."""
    teacher = Teacher(config.teacher, AnswerCache(config.out / INPUTS))
    shuffled = combinations(config)
    asked: list[Asked] = []
    kept = Deduplicated([], seed_vectors[:0], [])
    rounds = 0
    while rounds <= config.rounds and len(kept.kept) < config.count and not any(a.not_asked for a in asked):
        rounds += 1
        more = []
        for index, combination in enumerate(planned(shuffled, len(asked), config.count - len(kept.kept)),
                                            len(asked)):
            request = input_request(combination, seed_inputs, index, config.system)
            more.append(Asked(combination, request, request_key(config.teacher, request, 0)))
        ask_for_inputs(teacher, more, show_progress)
        asked += more
        kept = keep_diverse(asked, seed_inputs, seed_vectors, config, embedder)
    return asked, kept, teacher, rounds


def answering_task(config: GenerateConfig, tokens_used: int) -> GenerateConfig:
    """The task step two runs: the seeds as reference examples unless `examples` is set, and what step one left of
    the token budget (one budget covers both steps)."""
    update: dict = {}
    if config.examples is None and config.seeds_as_examples:
        update["examples"] = config.seeds
    if config.teacher.budget_tokens is not None:
        left = max(0, config.teacher.budget_tokens - tokens_used)  # 0: the teacher is asked nothing more
        update["teacher"] = config.teacher.model_copy(update={"budget_tokens": left})
    return config.model_copy(update=update)


def generate(config: GenerateConfig, show_progress: bool = True) -> dict:
    """Write new inputs from the seeds, keep the diverse ones, have the teacher answer them as `hone distill label`
    does; write the examples, the diversity report (diversity.json) and a summary; return the summary."""
    seeds = read_seeds(config.seeds)
    seed_inputs = [seed_input(seed) for seed in seeds]
    config.out.mkdir(parents=True, exist_ok=True)
    embedder = load_embedder(config.embedder)
    seed_vectors = embedder.encode(seed_inputs)
    asked, kept, input_teacher, rounds = vary_inputs(config, seed_inputs, seed_vectors, embedder, show_progress)
    _write_lines(config.out / DROPPED, kept.dropped)
    task = answering_task(config, input_teacher.usage.prompt_tokens + input_teacher.usage.completion_tokens)
    lineage = [{**a.combination.lineage(), "input_request_sha256": a.key,
                "generated_input_sha256": hashlib.sha256(a.text.encode()).hexdigest()} for a in kept.kept]
    summary = answer_prompts(task, [[{"role": "user", "content": a.text}] for a in kept.kept], kind="generate",
                             lineage=lineage, show_progress=show_progress)
    diversity = {"counts": input_counts(asked, kept), **diversity_report(kept, seed_inputs, seed_vectors),
                 "labels": None}
    if config.filters is not None and config.filters.labels is not None:
        diversity["labels"] = label_balance(seeds, config.out / LABELED, config.filters)
    (config.out / DIVERSITY).write_text(json.dumps(diversity, indent=2) + "\n", encoding="utf-8")
    summary.update({"diversity": diversity, "rounds": rounds, "input_usage": input_teacher.usage.report(config.teacher),
                    "input_failures": [{**a.combination.lineage(), "error": a.failure}
                                       for a in asked if a.failure is not None]})
    (config.out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _write_lines(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
