"""Is the dataset big enough for what it should teach? A verdict against minimum and recommended sizes.

The sizes are rules of thumb for LoRA fine-tuning of small and mid-size instruct models: a tone can be
learned from a few hundred examples, complex instruction following needs thousands. Classification is
judged per class, because the rarest class is the one the model will get wrong.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from hone.errors import HoneError

IMBALANCE_WARNING_RATIO = 3.0


@dataclass(frozen=True)
class SizeGuide:
    """Minimum and recommended example counts for one kind of task."""

    description: str
    minimum: int
    recommended: tuple[int, int]


TASK_SIZES: dict[str, SizeGuide] = {
    "style": SizeGuide("style or tone", 100, (300, 500)),
    "format": SizeGuide("output format", 200, (500, 1_000)),
    "vocabulary": SizeGuide("domain vocabulary", 500, (1_000, 3_000)),
    "classification": SizeGuide("classification (per class)", 50, (200, 500)),
    "instruction": SizeGuide("complex instruction following", 1_000, (5_000, 20_000)),
}


def verdict(count: int, guide: SizeGuide) -> str:
    """"ready" from the recommended lower bound, "thin" from the minimum, otherwise "too small"."""
    if count >= guide.recommended[0]:
        return "ready"
    if count >= guide.minimum:
        return "thin"
    return "too small"


def _advice(count: int, guide: SizeGuide, what: str) -> str:
    """One sentence saying where `count` stands and how many more examples would move it up."""
    low, high = guide.recommended
    sizes = f"minimum {guide.minimum:,}, recommended {low:,}-{high:,}"
    state = verdict(count, guide)
    if state == "ready":
        return f"{count:,} {what}: ready for {guide.description} ({sizes})"
    target, goal = (low, "the recommended size") if state == "thin" else (guide.minimum, "the minimum")
    return f"{count:,} {what}: {state} for {guide.description} ({sizes}); add {target - count:,} to reach {goal}"


def _guide(task_type: str) -> SizeGuide:
    if task_type not in TASK_SIZES:
        valid = ", ".join(f"{name} ({guide.description})" for name, guide in TASK_SIZES.items())
        raise HoneError(f"unknown task type {task_type!r}", hint=f"use one of: {valid}")
    return TASK_SIZES[task_type]


def _class_balance(labels: list[str], guide: SizeGuide) -> dict[str, Any]:
    """Per-class counts, the verdict of the smallest class, the imbalance ratio and its warnings."""
    per_class = dict(sorted(Counter(labels).items(), key=lambda item: (-item[1], str(item[0]))))
    smallest_label = min(per_class, key=lambda label: (per_class[label], str(label)))
    smallest, largest = per_class[smallest_label], max(per_class.values())
    ratio = round(largest / smallest, 2)
    warnings = []
    if len(per_class) < 2:
        warnings.append(f"only one class ({smallest_label!r}); a classifier needs examples of at least two")
    if ratio > IMBALANCE_WARNING_RATIO:
        warnings.append(f"classes are imbalanced: the largest has {ratio}x the examples of the smallest "
                        f"({smallest_label!r}, {smallest:,}); add examples of the rare classes or down-sample "
                        "the common ones")
    return {
        "per_class": per_class,
        "per_class_verdict": {label: verdict(count, guide) for label, count in per_class.items()},
        "smallest_class": {"label": smallest_label, "count": smallest},
        "imbalance_ratio": ratio,
        "verdict": verdict(smallest, guide),
        "message": _advice(smallest, guide, f"examples in the smallest class ({smallest_label!r})"),
        "warnings": warnings,
    }


def readiness(task_type: str, n_examples: int, labels: list[str] | None = None) -> dict[str, Any]:
    """The readiness verdict of `n_examples` training examples for `task_type`.

    task_type is one of style, format, vocabulary, classification, instruction. Classification needs
    `labels` (one per example) and is judged by its smallest class; the result then also holds
    per-class counts, the imbalance ratio (largest / smallest class) and a warning when it exceeds 3.
    """
    guide = _guide(task_type)
    result: dict[str, Any] = {
        "task_type": task_type,
        "description": guide.description,
        "examples": n_examples,
        "minimum": guide.minimum,
        "recommended": list(guide.recommended),
    }
    if task_type != "classification":
        return {**result, "verdict": verdict(n_examples, guide),
                "message": _advice(n_examples, guide, "examples"), "warnings": []}
    if not labels:
        raise HoneError("classification readiness is judged per class, but no labels were given",
                        hint="name the label field in the data config so each example's class is known")
    if len(labels) != n_examples:
        raise HoneError(f"got {len(labels)} labels for {n_examples} examples",
                        hint="pass one label per training example")
    return {**result, **_class_balance(labels, guide)}
