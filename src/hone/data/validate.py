"""Check a dataset file before training: format problems, duplicates, token lengths and statistics.

Covers the OpenAI fine-tuning data checks (format errors, missing keys, unrecognised roles, missing
content, no assistant message, too few examples, examples over the token limit, and for function calling:
malformed tools, calls to undefined functions, arguments that break the function's JSON Schema, calls never
answered) and adds exact duplicates and token counts under the target model's own chat template.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hone.data.formats import Example, HasProblems, PreferenceExample, Problem, read_dataset
from hone.data.render import render_chat
from hone.models import load_tokenizer

DEFAULT_MODEL = "smollm2-135m-instruct"
MIN_EXAMPLES = 10  # the OpenAI fine-tuning minimum; 50-100 usually show a clear gain


@dataclass
class ValidationReport(HasProblems):
    """The outcome of `validate_file`: every problem, sorted by line, and the token statistics."""

    file: str
    format: str
    model: str
    max_length: int
    problems: list[Problem]
    stats: dict[str, int | float]

    @property
    def ok(self) -> bool:
        """True when no problem is an error (warnings allowed)."""
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary: file, format, ok, counts, stats and every problem."""
        return {
            "file": self.file,
            "format": self.format,
            "model": self.model,
            "max_length": self.max_length,
            "ok": self.ok,
            "counts": {"errors": len(self.errors), "warnings": len(self.warnings)},
            "stats": self.stats,
            "problems": [p.to_dict() for p in self.problems],
        }


@dataclass
class _Sequence:
    """One token sequence the trainer would see: what it is, its length and its trained tokens."""

    field: str  # "" for a whole conversation; which output for a DPO pair
    length: int
    trained: int


def _sequences(tokenizer, example: Example | PreferenceExample) -> list[_Sequence]:
    """A conversation is one sequence; a preference pair is prompt+chosen and prompt+rejected."""
    if isinstance(example, Example):
        rendered = render_chat(tokenizer, example.messages, example.tools)
        return [_Sequence("", len(rendered), rendered.num_trained)]
    sequences = []
    for field, reply in (("preferred_output", example.chosen), ("non_preferred_output", example.rejected)):
        rendered = render_chat(tokenizer, [*example.prompt, reply])
        sequences.append(_Sequence(field, len(rendered), rendered.num_trained))
    return sequences


def _too_long(example: Example | PreferenceExample, sequence: _Sequence, max_length: int) -> Problem:
    what = f"prompt + {sequence.field}" if sequence.field else "the example"
    return Problem(example.line, sequence.field,
                   f"{what} is {sequence.length} tokens with the model's chat template, longer than "
                   f"max_length {max_length}; shorten or split it, or raise max_length (training skips it)")


def _fingerprint(example: Example | PreferenceExample) -> str:
    content = ([example.messages, example.tools] if isinstance(example, Example)
               else [example.prompt, example.chosen, example.rejected])
    return json.dumps(content, sort_keys=True, ensure_ascii=False)


def find_duplicates(examples: list[Example] | list[PreferenceExample]) -> list[Problem]:
    """A warning for each exact repeat of an earlier example, naming the line of the first occurrence."""
    first_seen: dict[str, int] = {}
    problems = []
    for example in examples:
        key = _fingerprint(example)
        if key in first_seen:
            message = (f"duplicate of line {first_seen[key]}; an exact repeat is trained twice as often "
                       "(remove it unless intended)")
            problems.append(Problem(example.line, "", message, "warning"))
        else:
            first_seen[key] = example.line
    return problems


def _prompt_roles(example: Example | PreferenceExample) -> set[str]:
    return {m["role"] for m in (example.messages if isinstance(example, Example) else example.prompt)}


def _length_stats(lengths: list[int]) -> dict[str, int | float]:
    """Mean, 95th percentile (nearest rank) and max of the per-example lengths."""
    if not lengths:
        return {"mean_tokens": 0, "p95_tokens": 0, "max_tokens": 0}
    ordered = sorted(lengths)
    return {"mean_tokens": round(sum(ordered) / len(ordered), 1),
            "p95_tokens": ordered[math.ceil(0.95 * len(ordered)) - 1],
            "max_tokens": ordered[-1]}


def validate_file(path: str | Path, model: str | None = None, max_length: int = 2048,
                  column_map: dict[str, str] | None = None,
                  progress: Callable[[int, int], None] | None = None) -> ValidationReport:
    """Check every line of a dataset file and count its tokens under `model`'s chat template.

    Adds to the problems `read_dataset` finds: an error per example longer than `max_length` tokens, a
    warning per exact duplicate and a warning for fewer than 10 examples. `progress(done, total)` is
    called after each example is tokenized. Raises HoneError only for a missing/empty file or unknown model.
    """
    model = model or DEFAULT_MODEL
    dataset = read_dataset(path, column_map)
    tokenizer = load_tokenizer(model)
    problems = list(dataset.problems)
    lengths, total, trained = [], 0, 0
    for done, example in enumerate(dataset.examples, start=1):
        sequences = _sequences(tokenizer, example)
        problems += [_too_long(example, s, max_length) for s in sequences if s.length > max_length]
        lengths.append(max(s.length for s in sequences))  # what must fit in max_length
        total += sum(s.length for s in sequences)
        trained += sum(s.trained for s in sequences)
        if progress:
            progress(done, len(dataset.examples))
    duplicates = find_duplicates(dataset.examples)
    problems += duplicates
    count = len(dataset.examples)
    if count < MIN_EXAMPLES:
        problems.append(Problem(0, "", f"only {count} usable example(s); fine-tuning needs at least "
                                f"{MIN_EXAMPLES}, and 50-100 usually show a clear improvement", "warning"))
    problems.sort(key=lambda p: p.line)
    stats: dict[str, int | float] = {
        "lines_read": dataset.lines_read,
        "blank_lines": dataset.blank_lines,
        "examples": count,
        "duplicates": len(duplicates),
        "too_long": sum(1 for length in lengths if length > max_length),
        "without_system": sum(1 for e in dataset.examples if "system" not in _prompt_roles(e)),
        "without_user": sum(1 for e in dataset.examples if "user" not in _prompt_roles(e)),
        "tool_calls": sum(len(m.get("tool_calls", [])) for e in dataset.examples if isinstance(e, Example)
                          for m in e.messages),
        "total_tokens": total,
        "trained_tokens": trained,
        **_length_stats(lengths),
    }
    return ValidationReport(file=str(path), format=dataset.format, model=model, max_length=max_length,
                            problems=problems, stats=stats)
