"""Traffic capture: served requests and answers stored with PII masked, plus user feedback on them.

Captured pairs, with corrected answers where users gave them, export as OpenAI chat JSONL: the raw
material for the next fine-tune.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, true
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hone.data.curate.pii import PiiSettings, Scrubber, undetectable_warning
from hone.store import engine_for, session
from hone.store.tables import DEFAULT_PROJECT, CapturedRequest, Feedback, iso_utc

log = logging.getLogger("hone.serve")
EXPORT_BATCH = 500  # rows read per query while exporting, so a large capture never sits in memory at once


@dataclass(frozen=True)
class GivenFeedback:
    """One rating and/or corrected answer (PII masked) given for a captured response."""

    rating: int | None
    correction: str | None
    created_at: str


@dataclass(frozen=True)
class CapturedExchange:
    """A captured request and answer as stored (PII masked), with every feedback given on it, oldest first."""

    response_id: str
    project: str
    model: str
    request: dict
    response_text: str
    usage: dict
    created_at: str
    feedback: list[GivenFeedback]


@dataclass(frozen=True)
class Served:
    """How a captured request was answered: by which version (None: the base), through which alias and arm
    (primary, canary or shadow), in how many milliseconds, and why it stopped (stop or length)."""

    version: str | None = None
    alias: str | None = None
    arm: str | None = None
    latency_ms: float | None = None
    finish_reason: str | None = None


class CaptureStore:
    """Captured requests and feedback in hone's database (see `hone.store.database_url`); thread-safe."""

    def __init__(self, db_url: str | None = None):
        self.engine = engine_for(db_url)
        self._scrubber: Scrubber | None = None
        self._scrub_lock = threading.Lock()

    def mask(self, text: str) -> str:
        """`text` with emails, phone numbers, card numbers and the like replaced by their type, e.g. <EMAIL_ADDRESS>."""
        with self._scrub_lock:
            # Built on first use and kept: setting up Presidio takes seconds.
            if self._scrubber is None:
                settings = PiiSettings(mode="mask")
                warning = undetectable_warning(settings)
                if warning:
                    log.warning("warning: captured traffic: %s", warning)
                self._scrubber = Scrubber(settings)
            findings = self._scrubber.find(text)
            return self._scrubber.replace(text, findings) if findings else text

    def record(self, *, response_id: str, model: str, request: dict, response_text: str, usage: dict,
               project: str = DEFAULT_PROJECT, served: Served | None = None) -> None:
        """Store one request of `project` and its answer, with PII masked in the messages (or prompt) and the
        answer, and what answered it how (`served`: version, alias, arm, latency, finish reason)."""
        served = served or Served()
        row = CapturedRequest(response_id=response_id, project=project, model=model,
                              request_json=json.dumps(self._masked(request)),
                              response_text=self.mask(response_text), usage_json=json.dumps(usage),
                              served_version=served.version, alias=served.alias, arm=served.arm,
                              latency_ms=served.latency_ms, finish_reason=served.finish_reason,
                              prompt_tokens=usage.get("prompt_tokens"),
                              completion_tokens=usage.get("completion_tokens"))
        try:
            with session(self.engine) as db:
                db.add(row)
        except IntegrityError:
            raise ValueError(f"response id {response_id!r} is already captured") from None

    def _masked(self, request: dict) -> dict:
        """A copy of the request body with every message text, prompt and the `user` field masked."""
        masked = dict(request)
        if isinstance(request.get("user"), str):  # OpenAI's end-user id is often an email address
            masked["user"] = self.mask(request["user"])
        if isinstance(request.get("messages"), list):
            masked["messages"] = [self._masked_message(m) for m in request["messages"]]
        prompt = request.get("prompt")
        if isinstance(prompt, str):
            masked["prompt"] = self.mask(prompt)
        elif isinstance(prompt, list):
            masked["prompt"] = [self.mask(p) if isinstance(p, str) else p for p in prompt]
        return masked

    def _masked_message(self, message: Any) -> Any:
        if not isinstance(message, dict):
            return message
        content = message.get("content")
        if isinstance(content, str):
            return {**message, "content": self.mask(content)}
        if isinstance(content, list):  # OpenAI content parts: only the text parts carry text
            parts = [{**p, "text": self.mask(p["text"])} if isinstance(p, dict) and isinstance(p.get("text"), str)
                     else p for p in content]
            return {**message, "content": parts}
        return message

    def feedback(self, *, response_id: str, rating: int | None, correction: str | None,
                 project: str | None = None) -> None:
        """Attach a rating and/or a corrected answer (PII-masked) to a captured response; the latest counts.

        Raises KeyError when no response with that id was captured (for `project`, when given: another
        project's response is not there), ValueError when both are None.
        """
        if rating is None and correction is None:
            raise ValueError("feedback needs a rating, a correction or both")
        masked = self.mask(correction) if correction is not None else None
        with session(self.engine) as db:
            query = select(CapturedRequest.id).where(CapturedRequest.response_id == response_id)
            if project is not None:
                query = query.where(CapturedRequest.project == project)
            if db.scalar(query) is None:
                raise KeyError(response_id)
            db.add(Feedback(response_id=response_id, rating=rating, correction=masked))

    def export(self, path: str | Path, *, min_rating: int | None = None, model: str | None = None,
               project: str | None = None) -> int:
        """Write captured conversations as OpenAI chat JSONL (the corrected answer where one was given).

        `min_rating` keeps only responses whose latest rating is at least that; `model` only one model's
        traffic; `project` only one project's. Returns the number of lines written; the file is replaced only
        once it is complete.
        """
        return self.export_report(path, min_rating=min_rating, model=model, project=project)["examples"]

    def export_report(self, path: str | Path, *, min_rating: int | None = None, model: str | None = None,
                      project: str | None = None) -> dict:
        """`export`, returning {"out", "examples", "skipped"}: skipped exchanges had no prompt or no answer."""
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        written = skipped = 0
        with partial.open("w", encoding="utf-8") as out:
            for capture, feedback in self._captures(min_rating=min_rating, model=model, project=project):
                example = _chat_example(capture, feedback)
                if example is None:
                    skipped += 1
                    continue
                out.write(json.dumps(example, ensure_ascii=False) + "\n")
                written += 1
        os.replace(partial, path)
        return {"out": str(path), "examples": written, "skipped": skipped}

    def _captures(self, *, min_rating: int | None, model: str | None,
                  project: str | None = None) -> Iterator[tuple[CapturedRequest, Feedback]]:
        """Captured requests, oldest first, each with its latest feedback (or None)."""
        latest = (select(Feedback.response_id, func.max(Feedback.id).label("feedback_id"))
                  .group_by(Feedback.response_id).subquery())
        query = (select(CapturedRequest, Feedback)
                 .outerjoin(latest, latest.c.response_id == CapturedRequest.response_id)
                 .outerjoin(Feedback, Feedback.id == latest.c.feedback_id)
                 .order_by(CapturedRequest.id))
        if model is not None:
            query = query.where(CapturedRequest.model == model)
        if min_rating is not None:
            query = query.where(Feedback.rating >= min_rating)
        if project is not None:
            query = query.where(CapturedRequest.project == project)
        last_id = 0
        while True:
            with session(self.engine) as db:
                rows = db.execute(query.where(CapturedRequest.id > last_id).limit(EXPORT_BATCH)).all()
            if not rows:
                return
            yield from ((row[0], row[1]) for row in rows)
            last_id = rows[-1][0].id

    def stats(self, project: str | None = None) -> dict:
        """Counts of captured requests (per model), feedback, ratings and corrections, and the time span; of one
        project's traffic when `project` is given."""
        mine = CapturedRequest.project == project if project is not None else true()
        on_mine = Feedback.response_id.in_(select(CapturedRequest.response_id).where(mine))
        with session(self.engine) as db:
            per_model = dict(db.execute(select(CapturedRequest.model, func.count()).where(mine)
                                        .group_by(CapturedRequest.model).order_by(CapturedRequest.model)).all())
            first, last = db.execute(select(func.min(CapturedRequest.created_at),
                                            func.max(CapturedRequest.created_at)).where(mine)).one()
            with_feedback = db.scalar(select(func.count(func.distinct(Feedback.response_id))).where(on_mine))
            ratings, mean_rating = db.execute(select(func.count(Feedback.rating), func.avg(Feedback.rating))
                                              .where(on_mine)).one()
            corrections = db.scalar(select(func.count(Feedback.correction)).where(on_mine))
        return {"captured": sum(per_model.values()), "per_model": per_model, "with_feedback": with_feedback,
                "ratings": ratings, "mean_rating": round(float(mean_rating), 3) if mean_rating is not None else None,
                "corrections": corrections, "first": iso_utc(first), "last": iso_utc(last)}

    def captured(self, project: str, *, model: str | None = None, min_rating: int | None = None, limit: int = 20,
                 after: str | None = None) -> tuple[list[CapturedExchange], bool]:
        """A page of `project`'s captured exchanges, newest first, older than response `after`; and whether more
        follow. `min_rating` keeps those whose latest rating is at least that. KeyError when `after` is not one
        of the project's captured responses."""
        latest = (select(Feedback.response_id, func.max(Feedback.id).label("feedback_id"))
                  .group_by(Feedback.response_id).subquery())
        query = select(CapturedRequest).where(CapturedRequest.project == project)
        if model is not None:
            query = query.where(CapturedRequest.model == model)
        if min_rating is not None:
            query = (query.join(latest, latest.c.response_id == CapturedRequest.response_id)
                     .join(Feedback, Feedback.id == latest.c.feedback_id).where(Feedback.rating >= min_rating))
        with session(self.engine) as db:
            if after is not None:
                query = query.where(CapturedRequest.id < self._row(db, project, after).id)
            rows = db.scalars(query.order_by(CapturedRequest.id.desc()).limit(limit + 1)).all()
            return [self._exchange(db, row) for row in rows[:limit]], len(rows) > limit

    def captured_one(self, project: str, response_id: str) -> CapturedExchange:
        """`project`'s captured exchange `response_id` with its feedback; KeyError when there is none (or it is
        another project's)."""
        with session(self.engine) as db:
            return self._exchange(db, self._row(db, project, response_id))

    @staticmethod
    def _row(db: Session, project: str, response_id: str) -> CapturedRequest:
        row = db.scalar(select(CapturedRequest).where(CapturedRequest.project == project,
                                                      CapturedRequest.response_id == response_id))
        if row is None:
            raise KeyError(response_id)
        return row

    @staticmethod
    def _exchange(db: Session, row: CapturedRequest) -> CapturedExchange:
        given = db.scalars(select(Feedback).where(Feedback.response_id == row.response_id).order_by(Feedback.id))
        return CapturedExchange(response_id=row.response_id, project=row.project, model=row.model,
                                request=json.loads(row.request_json), response_text=row.response_text,
                                usage=json.loads(row.usage_json), created_at=iso_utc(row.created_at),
                                feedback=[GivenFeedback(rating=f.rating, correction=f.correction,
                                                        created_at=iso_utc(f.created_at)) for f in given])


def _chat_example(capture: CapturedRequest, feedback: Feedback | None) -> dict | None:
    """The captured exchange as {"messages": [...]}, or None when it has no prompt or no answer to learn from."""
    answer = feedback.correction if feedback is not None and feedback.correction is not None else capture.response_text
    prompt = prompt_messages(json.loads(capture.request_json))
    if not prompt or not answer.strip():
        return None
    return {"messages": prompt + [{"role": "assistant", "content": answer}]}


def prompt_messages(request: dict) -> list[dict]:
    """The conversation sent: chat messages with their text flattened, or a completion prompt as one user turn."""
    if isinstance(request.get("messages"), list):
        messages = []
        for message in request["messages"]:
            if isinstance(message, dict) and message.get("role") in ("system", "user", "assistant"):
                messages.append({"role": message["role"], "content": message_text(message.get("content"))})
        return messages
    prompt = request.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) and prompt.strip() else []


def message_text(content: Any) -> str:
    """Message content as plain text: a string as is, the text parts of a content list joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""

