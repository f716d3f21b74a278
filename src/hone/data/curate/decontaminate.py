"""Decontamination: a training example that shares a word 13-gram with the eval/test set is removed.

Otherwise the evaluation would reward memorising the test set. 13 words is the n-gram length used by
GPT-3's contamination analysis: long enough that shared boilerplate rarely reaches it. Only the chosen
turns are compared (by default the user turns, i.e. the test questions): system prompts are shared by
design, and replies drawn from a small label space repeat without being leaks.
"""

from __future__ import annotations

import re

from hone.data.curate.steps import StepReport
from hone.data.formats import Example

_WORD = re.compile(r"\w+")


def word_ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    """Case-folded word n-grams of a text in order (a text shorter than n words has none)."""
    words = _WORD.findall(text.casefold())
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def turns_text(example: Example, roles: tuple[str, ...]) -> str:
    """The contents of the example's turns with the given roles, one per line."""
    return "\n".join(m["content"] for m in example.messages if m["role"] in roles)


def decontaminate(examples: list[Example], protected: list[Example], n: int = 13,
                  roles: tuple[str, ...] = ("user",)) -> tuple[list[Example], StepReport]:
    """Remove training examples sharing a word n-gram with the protected (eval/test) examples' turns."""
    report = StepReport("decontaminate", params={"n": n, "turns": list(roles), "protected_examples": len(protected)})
    forbidden: set[tuple[str, ...]] = set()
    for example in protected:
        forbidden.update(word_ngrams(turns_text(example, roles), n))
    kept = []
    for example in examples:
        shared = next((gram for gram in word_ngrams(turns_text(example, roles), n) if gram in forbidden), None)
        if shared is None:
            kept.append(example)
        else:
            report.remove(example, "contaminated", f"shares the {n}-gram \"{' '.join(shared)}\" with the eval set")
    report.count("kept", len(kept))
    return kept, report
