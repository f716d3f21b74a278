"""Seeded train/val/test split, stratified by label when a label is named.

The same examples, fractions and seed always give the same split. Within each label (or over all
examples) the sizes come from largest-remainder rounding, so every split gets its fair share of each
class and the sizes add up exactly.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from hone.data.formats import Example


def split_sizes(count: int, fractions: dict[str, float], turn: int = 0) -> dict[str, int]:
    """Integer sizes that add up to `count`, closest to count * fraction (largest remainder first).

    Equal remainders go to the parts in turn, starting at part number `turn`, so that over several
    classes a tie does not always favour the same part.
    """
    names = list(fractions)
    exact = {name: count * share for name, share in fractions.items()}
    sizes = {name: math.floor(value) for name, value in exact.items()}
    by_remainder = sorted(names, key=lambda name: (-round(exact[name] - sizes[name], 9),
                                                   (names.index(name) + turn) % len(names)))
    for name in by_remainder[: count - sum(sizes.values())]:
        sizes[name] += 1
    return sizes


def _deal(examples: list[Example], fractions: dict[str, float], rng: random.Random,
          turn: int) -> dict[str, list[Example]]:
    shuffled = list(examples)
    rng.shuffle(shuffled)
    parts, start = {}, 0
    for name, size in split_sizes(len(shuffled), fractions, turn).items():
        parts[name] = shuffled[start:start + size]
        start += size
    return parts


def split_examples(examples: list[Example], fractions: dict[str, float], seed: int = 0,
                   stratify: Callable[[Example], str] | None = None) -> dict[str, list[Example]]:
    """Split into the named parts (e.g. train/val/test); each part keeps the input order."""
    rng = random.Random(seed)
    position = {id(example): index for index, example in enumerate(examples)}
    groups: dict[str, list[Example]] = {}
    for example in examples:
        groups.setdefault(stratify(example) if stratify else "", []).append(example)
    parts: dict[str, list[Example]] = {name: [] for name in fractions}
    for turn, label in enumerate(sorted(groups)):
        for name, chosen in _deal(groups[label], fractions, rng, turn).items():
            parts[name].extend(chosen)
    return {name: sorted(chosen, key=lambda e: position[id(e)]) for name, chosen in parts.items()}
