"""Cleaning: Unicode NFC, whitespace normalisation, boilerplate removal and empty turns dropped.

Every change is counted; an example left without an assistant turn (or without any turn a model
could learn from) is removed and recorded with its reason.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import replace

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hone.data.curate.steps import StepReport
from hone.data.formats import Example
from hone.settings import check_regexes

_SPACES = re.compile(r"[ \t\f\v\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_INVISIBLE = re.compile(r"[\u200b\u200c\u200d\u2060\ufeff]")
_MANY_BLANK_LINES = re.compile(r"\n{3,}")


class CleanSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    unicode_nfc: bool = Field(True, description="Compose Unicode to NFC so equal text has equal bytes.")
    whitespace: bool = Field(True, description="Collapse runs of spaces, trim lines, at most one blank line.")
    boilerplate: list[str] = Field(default_factory=list, description="Regexes removed from every turn "
                                   "(multi-line; e.g. signatures, disclaimers).")
    drop_empty_turns: bool = Field(True, description="Remove turns that are empty after cleaning.")

    @field_validator("boilerplate")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        return check_regexes(patterns)


def normalise_whitespace(text: str) -> str:
    """Unify line ends, drop zero-width characters, collapse spaces, trim lines and blank-line runs."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _INVISIBLE.sub("", text)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _MANY_BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


class _Cleaner:
    """Applies the settings to one text at a time and counts what each rule changed."""

    def __init__(self, settings: CleanSettings, report: StepReport):
        self.settings = settings
        self.report = report
        self.boilerplate = [re.compile(p, re.MULTILINE | re.IGNORECASE) for p in settings.boilerplate]

    def text(self, text: str) -> str:
        if self.settings.unicode_nfc:
            composed = unicodedata.normalize("NFC", text)
            if composed != text:
                self.report.count("unicode_normalised")
                text = composed
        for pattern in self.boilerplate:
            text, hits = pattern.subn("", text)
            if hits:
                self.report.count("boilerplate_removed", hits)
        if self.settings.whitespace:
            tidy = normalise_whitespace(text)
            if tidy != text:
                self.report.count("whitespace_normalised")
                text = tidy
        return text

    def example(self, example: Example) -> Example:
        messages = []
        for message in example.messages:
            content = self.text(message["content"])
            # A turn that only calls tools has no text but is not empty.
            if not content.strip() and not message.get("tool_calls") and self.settings.drop_empty_turns:
                self.report.count("empty_turns_dropped")
                continue
            messages.append({**message, "content": content})
        return replace(example, messages=messages)


def clean_examples(examples: list[Example], settings: CleanSettings) -> tuple[list[Example], StepReport]:
    """Clean every example; those left without a user and an assistant turn are removed."""
    report = StepReport("clean", params=settings.model_dump())
    cleaner = _Cleaner(settings, report)
    kept = []
    for example in examples:
        cleaned = cleaner.example(example)
        roles = {m["role"] for m in cleaned.messages}
        if "assistant" not in roles:
            report.remove(example, "no_assistant_turn", "every assistant turn was empty after cleaning")
        elif "user" not in roles:
            report.remove(example, "no_user_turn", "every user turn was empty after cleaning")
        else:
            kept.append(cleaned)
    report.count("kept", len(kept))
    return kept, report
