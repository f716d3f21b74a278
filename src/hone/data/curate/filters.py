"""Quality filters with configurable thresholds; every dropped example is recorded with its reason.

Length per role (characters), character-repetition ratio (the share of a text covered by character
n-grams that occur more than once: high for copy-paste loops and filler), alphanumeric ratio (low for
markup, tables of symbols and encoding debris), and an optional language check (langdetect).
"""

from __future__ import annotations

from collections import Counter

from pydantic import BaseModel, ConfigDict, Field

from hone.data.curate.steps import StepReport, example_text, excerpt
from hone.data.formats import Example

ROLES = ("system", "user", "assistant")


class QualitySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_chars: dict[str, int] = Field(default_factory=lambda: {"user": 1, "assistant": 1},
                                      description="Per role: turns shorter than this (characters) drop the example.")
    max_chars: dict[str, int] = Field(default_factory=lambda: {"user": 20_000, "assistant": 20_000},
                                      description="Per role: turns longer than this drop the example.")
    max_char_repetition: float = Field(0.5, ge=0, le=1, description="Highest share of the text covered "
                                       "by repeated character n-grams.")
    repetition_ngram: int = Field(10, ge=2, description="Character n-gram length for the repetition ratio.")
    min_alnum_ratio: float = Field(0.25, ge=0, le=1, description="Lowest share of letters and digits among "
                                   "the non-space characters.")
    language: str | None = Field(None, description="ISO 639-1 code such as 'en'; examples detected as "
                                 "another language are dropped. Off when unset.")


def char_repetition_ratio(text: str, n: int = 10) -> float:
    """Share of character n-grams that occur more than once in the text (0 for texts shorter than 2n)."""
    if len(text) < 2 * n:
        return 0.0
    grams = Counter(text[i:i + n] for i in range(len(text) - n + 1))
    repeated = sum(count for count in grams.values() if count > 1)
    return repeated / (len(text) - n + 1)


def alnum_ratio(text: str) -> float:
    """Share of letters and digits among the non-whitespace characters (1.0 for empty text)."""
    visible = [c for c in text if not c.isspace()]
    return sum(c.isalnum() for c in visible) / len(visible) if visible else 1.0


def _detect_language(text: str) -> str:
    from langdetect import DetectorFactory, detect
    from langdetect.lang_detect_exception import LangDetectException

    DetectorFactory.seed = 0  # langdetect is random by default; fixed seed keeps the dataset reproducible
    try:
        return detect(text)
    except LangDetectException:
        return "unknown"


def _length_problem(example: Example, settings: QualitySettings) -> tuple[str, str] | None:
    for index, message in enumerate(example.messages):
        role, size = message["role"], len(message["content"])
        low, high = settings.min_chars.get(role), settings.max_chars.get(role)
        if low is not None and size < low and not message.get("tool_calls"):  # its calls are its text
            return "too_short", f"messages[{index}] ({role}) has {size} characters, min_chars.{role} is {low}"
        if high is not None and size > high:
            return "too_long", f"messages[{index}] ({role}) has {size:,} characters, max_chars.{role} is {high:,}"
    return None


def quality_problem(example: Example, settings: QualitySettings) -> tuple[str, str] | None:
    """The first rule the example breaks, as (reason, detail), or None when it passes them all."""
    found = _length_problem(example, settings)
    if found:
        return found
    text = example_text(example)
    repetition = char_repetition_ratio(text, settings.repetition_ngram)
    if repetition > settings.max_char_repetition:
        return "repetitive", (f"{repetition:.2f} of the text is repeated {settings.repetition_ngram}-character "
                              f"sequences (max_char_repetition {settings.max_char_repetition}): {excerpt(text, 60)}")
    ratio = alnum_ratio(text)
    if ratio < settings.min_alnum_ratio:
        return "low_alnum", (f"{ratio:.2f} of the characters are letters or digits (min_alnum_ratio "
                             f"{settings.min_alnum_ratio}): {excerpt(text, 60)}")
    if settings.language:
        language = _detect_language(text)
        if language != settings.language:
            return "wrong_language", f"detected language {language!r}, expected {settings.language!r}"
    return None


def quality_filter(examples: list[Example], settings: QualitySettings) -> tuple[list[Example], StepReport]:
    """Keep the examples that pass every rule; record each dropped one with the rule it broke."""
    report = StepReport("quality", params=settings.model_dump())
    kept = []
    for example in examples:
        problem = quality_problem(example, settings)
        if problem is None:
            kept.append(example)
        else:
            report.remove(example, *problem)
    report.count("kept", len(kept))
    return kept, report
