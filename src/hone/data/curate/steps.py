"""What every curation step reports: its parameters, its counts, and each example it removed and why."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hone.data.formats import Example

EXCERPT_CHARS = 120


def example_text(example: Example) -> str:
    """All message contents of an example joined by newlines (what dedup and filters look at)."""
    return "\n".join(message["content"] for message in example.messages)


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """A one-line shortened excerpt for reports (callers pass text that is already PII-masked)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


@dataclass
class Removal:
    """One example a step removed: where it came from and why."""

    source: str
    line: int
    reason: str
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "line": self.line, "reason": self.reason, "detail": self.detail}


@dataclass
class StepReport:
    """One step's record in the manifest and the report."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    removed: list[Removal] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # step-specific detail, e.g. duplicate clusters

    def count(self, key: str, by: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + by

    def remove(self, example: Example, reason: str, detail: str = "") -> None:
        self.removed.append(Removal(example.source, example.line, reason, detail))
        self.count(f"removed_{reason}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params, "counts": self.counts,
                "removed": [r.to_dict() for r in self.removed], **({"extra": self.extra} if self.extra else {})}
