"""Human review: blind side-by-side judgments of two candidates' replies, the ground truth for anything customer-facing.

A round (`review-...`) samples N prompts (seeded) from a version's evaluation (its per-example replies, e.g. base vs
fine-tuned) or from captured shadow traffic (champion vs challenger answering the same request, PII masked). Each
reviewer gets their own order of the items and their own coin flip per item for which reply is "A", stored
server-side, plus a few repeat items shown again later with the sides swapped to measure their self-consistency.
What a reviewer is shown is only an item id, the prompt and replies A and B: never which candidate wrote which.

Results: each candidate's win rate with a 95% bootstrap CI (ties and "both bad" count half to each side), agreement
between reviewers (Cohen's kappa for two, Fleiss' kappa for three or more), each reviewer's self-consistency, the
LLM judge's agreement with the human majority, and the both-bad rate. Export turns corrections into a chat fine-tune
file and judgments into DPO pairs.
"""

from __future__ import annotations

import hashlib
import json
import random
import secrets
import tempfile
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from hone import audit
from hone.data.versions import datasets_dir, record_prepared
from hone.errors import ConflictError, NotFoundError, RequestError
from hone.eval.records import ID_PREFIX, EvaluationRecord, get_evaluation, list_evaluations
from hone.eval.stats import bootstrap_mean_ci
from hone.monitor.capture import prompt_messages
from hone.store import engine_for, session
from hone.store.tables import (
    CapturedRequest,
    ReviewAssignment,
    ReviewItem,
    ReviewRound,
    iso_utc,
    utc_now,
)

Choice = Literal["A", "B", "tie", "both_bad"]
Outcome = Literal["first", "second", "tie", "both_bad"]  # a choice seen through the reviewer's sides
OUTCOMES: tuple[Outcome, ...] = ("first", "second", "tie", "both_bad")
MAX_ITEMS = 500
MAX_TEXT = 20_000  # characters of a corrected answer or a reason
MIN_OVERLAP = 5  # items judged by every reviewer compared, below which kappa says too little
TRAFFIC_WINDOW = 2_000  # newest shadow captures looked at when sampling traffic
WIN_RATE_METHOD = ("share of judgments preferring the candidate, ties and 'both bad' counting half to each side; "
                   "first showings only (repeats measure consistency); 95% CI: bootstrap over items, each item "
                   "weighted once whatever its number of reviewers")


# ---------------------------------------------------------------------------------------------- statistics


def cohens_kappa(first: Sequence[str], second: Sequence[str]) -> float | None:
    """Cohen's kappa of two raters' labels on the same items; None when undefined (no items, or both raters
    always give one and the same label, so chance agreement is 1)."""
    if len(first) != len(second):
        raise ValueError(f"the raters labelled {len(first)} and {len(second)} items; give both the same items")
    n = len(first)
    if n == 0:
        return None
    observed = sum(a == b for a, b in zip(first, second, strict=True)) / n
    first_counts, second_counts = Counter(first), Counter(second)
    expected = sum(first_counts[label] * second_counts[label] for label in first_counts) / (n * n)
    if expected >= 1:
        return None
    return (observed - expected) / (1 - expected)


def fleiss_kappa(counts: Sequence[Sequence[int]]) -> float | None:
    """Fleiss' kappa from an items x categories table of how many raters put each item in each category (every
    item rated by the same number of raters, at least two); None when undefined (no items, or one category only)."""
    if not counts:
        return None
    raters = sum(counts[0])
    if raters < 2 or any(sum(row) != raters for row in counts):
        raise ValueError("every item needs the same number of ratings, at least 2")
    items = len(counts)
    shares = [sum(row[j] for row in counts) / (items * raters) for j in range(len(counts[0]))]
    agreement = sum((sum(c * c for c in row) - raters) / (raters * (raters - 1)) for row in counts) / items
    expected = sum(share * share for share in shares)
    if expected >= 1:
        return None
    return (agreement - expected) / (1 - expected)


def outcome_of(choice: str, swapped: bool) -> Outcome:
    """The candidate a reviewer's choice favours: reply A is the first candidate's unless the sides are swapped."""
    if choice in ("tie", "both_bad"):
        return choice  # type: ignore[return-value]
    return "second" if (choice == "A") == swapped else "first"


def first_candidate_score(outcome: Outcome) -> float:
    """1 when the first candidate won, 0 when it lost, half for a tie or both bad (neither was preferred)."""
    return {"first": 1.0, "second": 0.0}.get(outcome, 0.5)


# ---------------------------------------------------------------------------------------------- blinding


@dataclass(frozen=True)
class Showing:
    """One place in a reviewer's order: which item, whether reply A is the second candidate's, whether a repeat."""

    item: int  # the item's position in the round
    swapped: bool
    repeat: bool


def reviewer_seed(round_seed: int, round_id: str, reviewer: str) -> int:
    """A seed of its own per reviewer and round, so each reviewer's order is stable yet differs from the others'."""
    digest = hashlib.sha256(f"{round_seed}\0{round_id}\0{reviewer}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def reviewer_order(items: int, repeats: int, seed: int) -> list[Showing]:
    """A reviewer's blinded order: the items shuffled, a coin flip per item for which side is A, and `repeats`
    items from the first half shown again later (at least two places after) with the sides swapped."""
    rng = random.Random(seed)
    order = [Showing(item, rng.random() < 0.5, False) for item in rng.sample(range(items), items)]
    repeats = min(repeats, items // 2)
    for original in rng.sample(order[: (items + 1) // 2], repeats):
        after = order.index(original) + 2
        order.insert(rng.randint(min(after, len(order)), len(order)), Showing(original.item, not original.swapped,
                                                                               True))
    return order


def default_repeats(items: int) -> int:
    """About one item in ten shown twice (at least one from four items up, at most 10)."""
    return 0 if items < 4 else min(10, max(1, round(items / 10)))


# ---------------------------------------------------------------------------------------------- shapes


class Message(BaseModel):
    role: str
    content: str


class Progress(BaseModel):
    judged: int = Field(description="Items this reviewer has judged.")
    total: int = Field(description="Items this reviewer is shown, repeats included.")


class Round(BaseModel):
    """A review round. `candidates`, `model_version`, `model` and `evaluation` are filled only for developers and
    above: a reviewer with the viewer role stays blind to what is compared."""

    id: str
    object: Literal["review_round"] = "review_round"
    name: str
    source: Literal["evaluation", "traffic"]
    created_at: str
    created_by: str | None = None
    items: int = Field(description="Sampled prompts.")
    repeats: int = Field(description="Items each reviewer sees a second time, sides swapped.")
    progress: Progress = Field(description="The caller's own progress.")
    reviewers: int = Field(description="Reviewers who judged at least one item.")
    judgments: int = Field(description="Judgments given, repeats included.")
    candidates: list[str] | None = None
    evaluation: str | None = None
    model_version: str | None = None
    model: str | None = None


class Judgment(BaseModel):
    choice: Choice
    corrected_answer: str | None = None
    reason: str | None = None
    judged_at: str


class ReviewerItem(BaseModel):
    """One item as a reviewer sees it: no candidate or model name, nothing that says which side is which."""

    id: str
    object: Literal["review.item"] = "review.item"
    position: int = Field(description="1-based place in this reviewer's order.")
    total: int
    prompt: list[Message]
    reply_a: str
    reply_b: str
    judgment: Judgment | None = None


class ReviewerQueue(BaseModel):
    """The caller's next unjudged item (None when they are done) and their progress."""

    object: Literal["review.next"] = "review.next"
    done: bool
    progress: Progress
    item: ReviewerItem | None = None


class CandidateResult(BaseModel):
    name: str
    wins: int
    losses: int
    ties: int
    both_bad: int
    win_rate: float | None = Field(description="0..1, ties and both-bad counting half; None without judgments.")
    ci_low: float | None = None
    ci_high: float | None = None


class Agreement(BaseModel):
    """Agreement between reviewers on the items every compared reviewer judged, beyond chance."""

    method: Literal["cohen", "fleiss"] | None = None
    kappa: float | None = None
    observed: float | None = Field(None, description="Share of agreeing rater pairs.")
    reviewers: list[str] = []
    items: int = 0
    reason: str | None = Field(None, description="Why kappa is None.")


class Consistency(BaseModel):
    reviewer: str
    repeats: int = Field(description="Repeated items this reviewer judged both times.")
    consistent: int
    rate: float | None = None


class JudgeAgreement(BaseModel):
    """How often the LLM judge's pairwise verdict matches the human majority (both bad counts as a tie)."""

    items: int = 0
    agreeing: int = 0
    rate: float | None = None
    kappa: float | None = None
    reason: str | None = None


class ReviewerCount(BaseModel):
    reviewer: str
    judgments: int


class Results(BaseModel):
    object: Literal["review.results"] = "review.results"
    round: str
    judgments: int = Field(description="Judgments of first showings (repeats are counted under consistency).")
    reviewers: list[ReviewerCount]
    candidates: list[CandidateResult]
    method: str = WIN_RATE_METHOD
    both_bad_rate: float | None = None
    agreement: Agreement
    consistency: list[Consistency]
    judge_agreement: JudgeAgreement


class ExportedFile(BaseModel):
    id: str
    filename: str
    examples: int
    errors: int


class Skipped(BaseModel):
    tie: int = Field(0, description="Ties without a corrected answer: no preference to learn.")
    both_bad: int = Field(0, description="'Both bad' without a corrected answer.")
    identical: int = Field(0, description="Pairs whose preferred and other reply are the same text.")


class Export(BaseModel):
    object: Literal["review.export"] = "review.export"
    round: str
    corrections: int
    pairs: int
    corrections_file: ExportedFile | None = Field(None, description="Chat JSONL: prompt + corrected answer.")
    corrections_dataset: str | None = Field(None, description="The corrections curated (PII masked, deduplicated) "
                                            "into a dataset version under $HONE_HOME/datasets: its id.")
    preference_file: ExportedFile | None = Field(None, description="OpenAI DPO JSONL.")
    skipped: Skipped


class FileSink(Protocol):
    """Where exported files go: `hone.jobs.files.FileStore` (as /v1/files objects, purpose fine-tune)."""

    def upload(self, project: str, source: Any, filename: str | None, purpose: str, *args: Any,
               actor: str | None = None) -> Any: ...


# ---------------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class SourceItem:
    """One prompt and the two candidates' replies, as a round stores it."""

    ref: str
    prompt: list[dict]
    first_reply: str
    second_reply: str
    judge_outcome: Outcome | None = None


def evaluation_id(text: str) -> int:
    """The version_evaluations row id of `eval-N` (or N); RequestError naming the field otherwise."""
    number = text.removeprefix(ID_PREFIX)
    if not number.isdigit():
        raise RequestError(f"evaluation {text!r} is not an evaluation id", param="evaluation", code="invalid_value",
                           hint="give an id like eval-12, as GET /v1/evaluations lists them")
    return int(number)


def _judge_outcomes(report: dict, first: str, second: str) -> list[str | None] | None:
    """The judge's pairwise verdicts per example for `second` against `first`, as first/second/tie; None without."""
    for name, flipped in ((second, False), (first, True)):
        summary = ((report.get("judge") or {}).get("pairwise") or {}).get(name)
        if summary and summary.get("against") == (first if name == second else second):
            wins = {"win": "first" if flipped else "second", "loss": "second" if flipped else "first", "tie": "tie"}
            return [wins.get(outcome) if outcome else None for outcome in summary.get("outcomes", [])]
    return None


def evaluation_items(report: dict, candidates: Sequence[str] | None) -> tuple[list[str], list[SourceItem]]:
    """The candidates compared (default: the report's baseline and its verdict's candidate) and every example both
    answered, from a full eval report with per-example replies."""
    names = [c["name"] for c in report.get("candidates", [])]
    if candidates is None:
        baseline = report.get("baseline") or (names[0] if names else None)
        other = (report.get("verdict") or {}).get("candidate") or next((n for n in names if n != baseline), None)
        candidates = [baseline, other]
    if len(candidates) != 2 or candidates[0] == candidates[1] or any(c not in names for c in candidates):
        raise RequestError(f"candidates {list(candidates)} must be two different candidates of the evaluation, "
                           f"one of {names}", param="candidates", code="invalid_value")
    first, second = candidates
    verdicts = _judge_outcomes(report, first, second)
    items = []
    for index, example in enumerate(report.get("examples") or []):
        outputs = example.get("outputs") or {}
        replies = [(outputs.get(name) or {}).get("text") for name in candidates]
        if any(not isinstance(reply, str) for reply in replies) or not isinstance(example.get("prompt"), list):
            continue  # a failed request has no reply to compare
        verdict = verdicts[index] if verdicts and index < len(verdicts) else None
        items.append(SourceItem(str(example.get("index", index)), example["prompt"], replies[0], replies[1],
                                verdict))
    return list(candidates), items


def _traffic_items(db, project: str, model: str | None) -> tuple[list[str], list[SourceItem]]:
    """Shadow pairs of `model`'s captured traffic: the champion's answer (primary arm) and the challenger's to the
    same request (arm shadow, captured as `{id}-shadow`), for the newest champion/challenger pair."""
    query = select(CapturedRequest).where(CapturedRequest.project == project, CapturedRequest.arm == "shadow")
    if model is not None:
        query = query.where(CapturedRequest.model == model)
    shadows = db.scalars(query.order_by(CapturedRequest.id.desc()).limit(TRAFFIC_WINDOW)).all()
    primaries = {row.response_id: row for row in db.scalars(select(CapturedRequest).where(
        CapturedRequest.project == project,
        CapturedRequest.response_id.in_([s.response_id.removesuffix("-shadow") for s in shadows])))}
    pairs = [(primaries[s.response_id.removesuffix("-shadow")], s) for s in shadows
             if s.response_id.removesuffix("-shadow") in primaries]
    if not pairs:
        raise ConflictError(f"no captured shadow traffic{f' of {model!r}' if model else ''} to review",
                            param="model", code="no_traffic",
                            hint="start a shadow split (POST /v1/canary) so champion and challenger answer the same "
                                 "requests, with capture on, then create the round")
    champion = pairs[0][0].served_version or "base"
    challenger = pairs[0][1].served_version or "base"
    items = [SourceItem(primary.response_id, prompt_messages(json.loads(primary.request_json)),
                        primary.response_text, shadow.response_text)
             for primary, shadow in pairs
             if (primary.served_version or "base", shadow.served_version or "base") == (champion, challenger)]
    return [champion, challenger], [item for item in items if item.prompt]


# ---------------------------------------------------------------------------------------------- the store


def _text(value: str | None, field: str) -> str | None:
    if value is None or not value.strip():
        return None
    if len(value) > MAX_TEXT:
        raise RequestError(f"{field} is {len(value):,} characters long; keep it under {MAX_TEXT:,}", param=field,
                           code="invalid_value")
    return value


def _messages(prompt_json: str) -> list[Message]:
    return [Message(role=str(m.get("role", "user")), content=str(m.get("content") or ""))
            for m in json.loads(prompt_json) if isinstance(m, dict)]


class ReviewStore:
    """Review rounds of every project in hone's database; each call is scoped to one project (another project's
    round answers NotFoundError), and every change is audited in its own transaction."""

    def __init__(self, db_url: str | None = None):
        self.db_url = db_url
        self.engine = engine_for(db_url)

    # --- creating

    def create(self, project: str, *, source: Literal["evaluation", "traffic"], actor: str | None,
               evaluation: str | None = None, model_version: str | None = None, model: str | None = None,
               candidates: Sequence[str] | None = None, items: int = 20, repeats: int | None = None,
               seed: int = 0, name: str | None = None) -> Round:
        """Sample `items` prompts (seeded) of an evaluation (`evaluation` id, or the newest evaluation of
        `model_version`) or of `model`'s captured shadow traffic into a new round."""
        if not 1 <= items <= MAX_ITEMS:
            raise RequestError(f"items {items} is out of range; sample 1 to {MAX_ITEMS} prompts", param="items",
                               code="invalid_value")
        evaluation_row, version = None, None
        if source == "evaluation":
            record = self._evaluation(project, evaluation, model_version)
            report = record.report()
            if report is None:
                raise ConflictError(f"the full report of evaluation {record.id} is no longer on disk",
                                    param="evaluation", code="report_missing",
                                    hint="evaluate the version again, then review the new evaluation")
            names, found = evaluation_items(report, candidates)
            evaluation_row, version = int(record.id.removeprefix(ID_PREFIX)), record.version
        with session(self.engine) as db:
            if source == "traffic":
                names, found = _traffic_items(db, project, model)
            if not found:
                raise ConflictError("the source has no prompt that both candidates answered", param="source",
                                    code="nothing_to_review")
            sampled = random.Random(seed).sample(found, min(items, len(found)))
            repeats = default_repeats(len(sampled)) if repeats is None else repeats
            if not 0 <= repeats <= len(sampled) // 2:
                raise RequestError(f"repeats {repeats} is out of range; repeat 0 to {len(sampled) // 2} of the "
                                   f"{len(sampled)} items", param="repeats", code="invalid_value")
            round_row = ReviewRound(id=f"review-{secrets.token_hex(12)}", project=project, source=source,
                                    name=(name or "").strip()[:256] or f"Review of {len(sampled)} prompts",
                                    evaluation_id=evaluation_row, model_version=version, model=model,
                                    candidates_json=json.dumps(names), seed=seed, repeats=repeats, actor=actor,
                                    created_at=utc_now())
            db.add(round_row)
            db.flush()  # the items point at the round: no ORM relationship orders the inserts
            db.add_all(ReviewItem(round_id=round_row.id, position=position, source_ref=item.ref[:160],
                                  prompt_json=json.dumps(item.prompt), first_reply=item.first_reply,
                                  second_reply=item.second_reply, judge_outcome=item.judge_outcome)
                       for position, item in enumerate(sampled))
            audit.record(db, project=project, actor=actor, action="review.created", object_type="review_round",
                         object_id=round_row.id, details={"source": source, "candidates": names,
                                                          "evaluation": evaluation_row, "model_version": version,
                                                          "model": model, "items": len(sampled), "repeats": repeats,
                                                          "seed": seed})
            db.flush()
            return self._round(db, round_row, actor, reveal=True)

    def _evaluation(self, project: str, evaluation: str | None, model_version: str | None) -> EvaluationRecord:
        """The evaluation `evaluation` (eval-N), else the newest evaluation of `model_version`."""
        if evaluation is not None:
            return get_evaluation(project, evaluation, self.db_url)
        if model_version is None:
            raise RequestError("name the evaluation to review: evaluation (an eval-N id) or model_version",
                               param="evaluation", code="missing_required_parameter")
        found = list_evaluations(project, self.db_url, version=model_version)
        if not found:
            raise NotFoundError(f"the model '{model_version}' has no evaluation (or does not exist)",
                                param="model_version", code="not_found")
        return found[0]

    # --- reading rounds

    def _row(self, db, project: str, round_id: str) -> ReviewRound:
        row = db.get(ReviewRound, round_id) if isinstance(round_id, str) else None
        if row is None or row.project != project:
            raise NotFoundError(f"no review round with id '{round_id}'", param="review_id", code="not_found")
        return row

    def _round(self, db, row: ReviewRound, reviewer: str | None, reveal: bool) -> Round:
        items = db.scalar(select(func.count()).select_from(ReviewItem).where(ReviewItem.round_id == row.id))
        judged = select(ReviewAssignment).where(ReviewAssignment.round_id == row.id,
                                                ReviewAssignment.choice.is_not(None))
        judgments = db.scalar(select(func.count()).select_from(judged.subquery()))
        reviewers = db.scalar(select(func.count(func.distinct(ReviewAssignment.reviewer)))
                              .where(ReviewAssignment.round_id == row.id, ReviewAssignment.choice.is_not(None)))
        mine = db.scalar(select(func.count()).select_from(judged.where(ReviewAssignment.reviewer == reviewer)
                                                          .subquery())) if reviewer else 0
        return Round(id=row.id, name=row.name, source=row.source, created_at=iso_utc(row.created_at),
                     created_by=row.actor, items=items, repeats=row.repeats, judgments=judgments, reviewers=reviewers,
                     progress=Progress(judged=mine, total=items + min(row.repeats, items // 2)),
                     candidates=json.loads(row.candidates_json) if reveal else None,
                     evaluation=f"{ID_PREFIX}{row.evaluation_id}" if reveal and row.evaluation_id else None,
                     model_version=row.model_version if reveal else None, model=row.model if reveal else None)

    def reviews_blind(self, project: str, evaluation: str, reviewer: str) -> bool:
        """Whether `reviewer` has items of a round sampled from `evaluation` (eval-N): such a reviewer must not
        read that evaluation's replies by candidate, or the round is no longer blind."""
        with session(self.engine) as db:
            return db.scalar(select(ReviewAssignment.id).join(ReviewRound, ReviewRound.id == ReviewAssignment.round_id)
                             .where(ReviewRound.project == project,
                                    ReviewRound.evaluation_id == evaluation_id(evaluation),
                                    ReviewAssignment.reviewer == reviewer).limit(1)) is not None

    def get(self, project: str, round_id: str, reviewer: str | None, reveal: bool) -> Round:
        """One round with the caller's progress; `reveal` adds what it compares (for developers and above)."""
        with session(self.engine) as db:
            return self._round(db, self._row(db, project, round_id), reviewer, reveal)

    def list(self, project: str, reviewer: str | None, reveal: bool, *, evaluation: str | None = None,
             model_version: str | None = None, limit: int = 50) -> list[Round]:
        """The project's rounds, newest first, optionally those of one evaluation or one model version."""
        query = select(ReviewRound).where(ReviewRound.project == project)
        if evaluation is not None:
            query = query.where(ReviewRound.evaluation_id == evaluation_id(evaluation))
        if model_version is not None:
            query = query.where(ReviewRound.model_version == model_version)
        with session(self.engine) as db:
            rows = db.scalars(query.order_by(ReviewRound.created_at.desc(), ReviewRound.id).limit(limit)).all()
            return [self._round(db, row, reviewer, reveal) for row in rows]

    # --- reviewing

    def _assignments(self, project: str, round_id: str, reviewer: str) -> None:
        """Make the reviewer's blinded order (once, from their own seed) on their first visit, in its own
        transaction with its audit entry; another tab of the same reviewer making it at the same moment wins, and
        that order is kept."""
        with session(self.engine) as db:
            row = self._row(db, project, round_id)
            if db.scalar(select(ReviewAssignment.id).where(ReviewAssignment.round_id == row.id,
                                                           ReviewAssignment.reviewer == reviewer).limit(1)):
                return
            items = db.scalars(select(ReviewItem.id).where(ReviewItem.round_id == row.id)
                               .order_by(ReviewItem.position)).all()
            order = reviewer_order(len(items), row.repeats, reviewer_seed(row.seed, row.id, reviewer))
            made = [ReviewAssignment(id=f"ritem-{secrets.token_hex(12)}", round_id=row.id, reviewer=reviewer,
                                     position=place, item_id=items[showing.item], swapped=int(showing.swapped),
                                     repeat=int(showing.repeat)) for place, showing in enumerate(order)]
        try:
            with session(self.engine) as db:
                db.add_all(made)
                db.flush()  # a concurrent tab's order fails here, before anything is audited
                audit.record(db, project=row.project, actor=reviewer, action="review.assigned",
                             object_type="review_round", object_id=row.id, details={"items": len(made)})
        except IntegrityError:
            return

    def _order(self, db, project: str, round_id: str, reviewer: str) -> list[ReviewAssignment]:
        """The reviewer's stored order (made by `_assignments` beforehand)."""
        self._row(db, project, round_id)
        return list(db.scalars(select(ReviewAssignment).where(ReviewAssignment.round_id == round_id,
                                                              ReviewAssignment.reviewer == reviewer)
                               .order_by(ReviewAssignment.position)))

    @staticmethod
    def _shown(db, assignment: ReviewAssignment, total: int) -> ReviewerItem:
        item = db.get(ReviewItem, assignment.item_id)
        replies = (item.second_reply, item.first_reply) if assignment.swapped else (item.first_reply,
                                                                                      item.second_reply)
        judgment = None if assignment.choice is None else Judgment(
            choice=assignment.choice, corrected_answer=assignment.corrected_answer, reason=assignment.reason,
            judged_at=iso_utc(assignment.judged_at))
        return ReviewerItem(id=assignment.id, position=assignment.position + 1, total=total,
                            prompt=_messages(item.prompt_json), reply_a=replies[0], reply_b=replies[1],
                            judgment=judgment)

    def next_item(self, project: str, round_id: str, reviewer: str) -> ReviewerQueue:
        """The reviewer's first unjudged item in their order, and their progress."""
        self._assignments(project, round_id, reviewer)
        with session(self.engine) as db:
            shown = self._order(db, project, round_id, reviewer)
            judged = sum(a.choice is not None for a in shown)
            pending = next((a for a in shown if a.choice is None), None)
            return ReviewerQueue(done=pending is None, progress=Progress(judged=judged, total=len(shown)),
                                 item=self._shown(db, pending, len(shown)) if pending else None)

    def items(self, project: str, round_id: str, reviewer: str) -> list[ReviewerItem]:
        """Every item in the reviewer's order, with their judgment where they gave one."""
        self._assignments(project, round_id, reviewer)
        with session(self.engine) as db:
            shown = self._order(db, project, round_id, reviewer)
            return [self._shown(db, a, len(shown)) for a in shown]

    def item(self, project: str, round_id: str, item_id: str, reviewer: str) -> ReviewerItem:
        """One of the reviewer's items (another reviewer's item id answers NotFoundError)."""
        self._assignments(project, round_id, reviewer)
        with session(self.engine) as db:
            shown = self._order(db, project, round_id, reviewer)
            return self._shown(db, _reviewer_item(shown, item_id, round_id), len(shown))

    def judge(self, project: str, round_id: str, item_id: str, reviewer: str, *, choice: Choice,
              corrected_answer: str | None = None, reason: str | None = None) -> ReviewerItem:
        """Record the reviewer's judgment of one of their items; a second one replaces the first (both audited)."""
        if choice not in ("A", "B", "tie", "both_bad"):
            raise RequestError(f"choice {choice!r} must be A, B, tie or both_bad", param="choice",
                               code="invalid_value")
        corrected_answer, reason = _text(corrected_answer, "corrected_answer"), _text(reason, "reason")
        self._assignments(project, round_id, reviewer)
        with session(self.engine) as db:
            shown = self._order(db, project, round_id, reviewer)
            found = _reviewer_item(shown, item_id, round_id)
            replaced = found.choice
            found.choice, found.corrected_answer, found.reason = choice, corrected_answer, reason
            found.judged_at = utc_now()
            audit.record(db, project=project, actor=reviewer, action="review.judged", object_type="review_round",
                         object_id=round_id, details={"item": item_id, "choice": choice, "replaced": replaced,
                                                      "corrected": corrected_answer is not None,
                                                      # free text may quote users: the append-only log keeps none
                                                      "reason": reason is not None})
            db.flush()
            return self._shown(db, found, len(shown))

    # --- results

    def _judged(self, db, round_id: str) -> list[tuple[ReviewAssignment, ReviewItem]]:
        return list(db.execute(select(ReviewAssignment, ReviewItem)
                               .join(ReviewItem, ReviewItem.id == ReviewAssignment.item_id)
                               .where(ReviewAssignment.round_id == round_id, ReviewAssignment.choice.is_not(None))
                               .order_by(ReviewAssignment.reviewer, ReviewAssignment.position)).tuples())

    def results(self, project: str, round_id: str) -> Results:
        """Win rates with CIs, agreement between reviewers, self-consistency, judge agreement, both-bad rate."""
        with session(self.engine) as db:
            row = self._row(db, project, round_id)
            judged = self._judged(db, round_id)
            judge = {item.id: item.judge_outcome for item in db.scalars(
                select(ReviewItem).where(ReviewItem.round_id == round_id)) if item.judge_outcome}
        return summarize(round_id, json.loads(row.candidates_json),
                         [(a.reviewer, a.item_id, bool(a.repeat), outcome_of(a.choice, bool(a.swapped)))
                          for a, _ in judged], judge)

    # --- export

    def export(self, project: str, round_id: str, files: FileSink, actor: str | None, *, corrections: bool = True,
               preferences: bool = True) -> Export:
        """Corrections as a chat fine-tune file and judgments as DPO pairs, both stored as /v1/files objects (either
        left out when not wanted); audited."""
        with session(self.engine) as db:
            self._row(db, project, round_id)
            judged = self._judged(db, round_id)
        chat, pairs, skipped = training_lines(judged)
        wanted = {"corrections": chat if corrections else [], "preferences": pairs if preferences else []}
        stored = {kind: self._stored(files, project, f"{round_id}-{kind}.jsonl", lines, actor)
                  for kind, lines in wanted.items() if lines}
        dataset = corrections_dataset(round_id, wanted["corrections"]) if wanted["corrections"] else None
        result = Export(round=round_id, corrections=len(wanted["corrections"]), pairs=len(wanted["preferences"]),
                        skipped=skipped, corrections_file=stored.get("corrections"),
                        corrections_dataset=dataset[0]["dataset_id"] if dataset else None,
                        preference_file=stored.get("preferences"))
        with session(self.engine) as db:
            if dataset:
                record_prepared(db, *dataset, project, actor)
            audit.record(db, project=project, actor=actor, action="review.exported", object_type="review_round",
                         object_id=round_id, details={"corrections": result.corrections, "pairs": result.pairs,
                                                      "files": [f.id for f in stored.values()],
                                                      "skipped": skipped.model_dump()})
        return result

    @staticmethod
    def _stored(files: FileSink, project: str, filename: str, lines: list[dict], actor: str | None) -> ExportedFile:
        content = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()
        made = files.upload(project, [content], filename, "fine-tune", actor=actor)
        return ExportedFile(id=made.id, filename=made.filename, examples=made.examples, errors=made.errors)


def _reviewer_item(shown: list[ReviewAssignment], item_id: str, round_id: str) -> ReviewAssignment:
    """The reviewer's own item `item_id` (another reviewer's item answers NotFoundError, as an unknown one does)."""
    found = next((a for a in shown if a.id == item_id), None)
    if found is None:
        raise NotFoundError(f"no review item with id '{item_id}' for you in {round_id}", param="item_id",
                            code="not_found")
    return found


def corrections_dataset(round_id: str, lines: list[dict]) -> tuple[dict, Path]:
    """The corrected answers curated as `hone data prepare` does (clean, PII, dedup, quality; all in train) into
    `$HONE_HOME/datasets/{round}-corrections-{hash}`, a folder per distinct set of corrections: (manifest, folder)."""
    from hone.data.curate.prepare import InputSpec, PrepareConfig, SplitSettings, prepare

    content = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    out = datasets_dir() / f"{round_id}-corrections-{hashlib.sha256(content.encode()).hexdigest()[:12]}"
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / f"{round_id}-corrections.jsonl"
        source.write_text(content, encoding="utf-8")
        manifest = prepare(PrepareConfig(inputs=[InputSpec(path=source)], out=out,
                                         split=SplitSettings(train=1.0, val=0, test=0)))
    return manifest, out


def training_lines(judged: list[tuple[ReviewAssignment, ReviewItem]]) -> tuple[list[dict], list[dict], Skipped]:
    """Chat examples (prompt + corrected answer) and OpenAI DPO pairs from judgments, each distinct line once.

    A pair prefers the chosen reply, or the corrected answer when there is one, over the other reply (over both
    replies for a tie or both-bad with a correction); ties and both-bad without a correction teach no preference.
    Pairs come from first showings only; a corrected answer counts wherever it was given.
    """
    corrections: dict[str, dict] = {}
    pairs: dict[str, dict] = {}
    skipped = Skipped()
    for assignment, item in judged:
        prompt = json.loads(item.prompt_json)
        shown = (item.second_reply, item.first_reply) if assignment.swapped else (item.first_reply, item.second_reply)
        fix = assignment.corrected_answer
        if fix is not None:
            line = {"messages": prompt + [{"role": "assistant", "content": fix}]}
            corrections[json.dumps(line, sort_keys=True)] = line
        if assignment.repeat:
            continue  # a repeat measures consistency; its pair would count the item twice
        if assignment.choice in ("tie", "both_bad") and fix is None:
            setattr(skipped, assignment.choice, getattr(skipped, assignment.choice) + 1)
            continue
        chosen = {"A": 0, "B": 1}.get(assignment.choice)
        preferred = fix if fix is not None else shown[chosen]
        others = [shown[1 - chosen]] if chosen is not None else list(dict.fromkeys(shown))
        for other in others:
            if other == preferred:
                skipped.identical += 1
                continue
            line = {"input": {"messages": prompt}, "preferred_output": [{"role": "assistant", "content": preferred}],
                    "non_preferred_output": [{"role": "assistant", "content": other}]}
            pairs[json.dumps(line, sort_keys=True)] = line
    return list(corrections.values()), list(pairs.values()), skipped


# ---------------------------------------------------------------------------------------------- summaries

Judged = tuple[str, int, bool, Outcome]  # reviewer, item, repeat, outcome


def candidate_results(candidates: list[str], firsts: list[Judged], seed: int = 0) -> list[CandidateResult]:
    """Each candidate's wins, losses, ties, both-bad and win rate with its 95% bootstrap CI over items."""
    counts = Counter(outcome for *_, outcome in firsts)
    per_item: dict[int, list[float]] = defaultdict(list)
    for _, item, _, outcome in firsts:
        per_item[item].append(first_candidate_score(outcome))
    means = [sum(scores) / len(scores) for scores in per_item.values()]
    point = sum(means) / len(means) if means else None
    interval = bootstrap_mean_ci(means, seed=seed) if means else None
    first = CandidateResult(name=candidates[0], wins=counts["first"], losses=counts["second"], ties=counts["tie"],
                            both_bad=counts["both_bad"], win_rate=_round(point),
                            ci_low=_round(interval[0]) if interval else None,
                            ci_high=_round(interval[1]) if interval else None)
    second = CandidateResult(name=candidates[1], wins=counts["second"], losses=counts["first"], ties=counts["tie"],
                             both_bad=counts["both_bad"], win_rate=_round(None if point is None else 1 - point),
                             ci_low=_round(1 - interval[1]) if interval else None,
                             ci_high=_round(1 - interval[0]) if interval else None)
    return [first, second]


def reviewer_agreement(firsts: list[Judged]) -> Agreement:
    """Cohen's kappa for two reviewers, Fleiss' kappa for three or more, on the items every one of them judged."""
    by_reviewer: dict[str, dict[int, Outcome]] = defaultdict(dict)
    for reviewer, item, _, outcome in firsts:
        by_reviewer[reviewer][item] = outcome
    reviewers = sorted(by_reviewer)
    if len(reviewers) < 2:
        return Agreement(reviewers=reviewers, reason="agreement needs judgments from at least 2 reviewers")
    shared = sorted(set.intersection(*(set(judged) for judged in by_reviewer.values())))
    if len(shared) < MIN_OVERLAP:
        return Agreement(reviewers=reviewers, items=len(shared),
                         reason=f"only {len(shared)} items were judged by all {len(reviewers)} reviewers; kappa "
                                f"needs at least {MIN_OVERLAP}")
    labels = [[by_reviewer[r][item] for r in reviewers] for item in shared]
    pairs = [(a, b) for row in labels for i, a in enumerate(row) for b in row[i + 1:]]
    observed = sum(a == b for a, b in pairs) / len(pairs)
    if len(reviewers) == 2:
        method, kappa = "cohen", cohens_kappa([row[0] for row in labels], [row[1] for row in labels])
    else:
        method, kappa = "fleiss", fleiss_kappa([[row.count(o) for o in OUTCOMES] for row in labels])
    return Agreement(method=method, kappa=_round(kappa), observed=_round(observed), reviewers=reviewers,
                     items=len(shared), reason=None if kappa is not None else
                     "every judgment fell in one category, so agreement beyond chance is undefined")


def self_consistency(judged: list[Judged]) -> list[Consistency]:
    """Per reviewer: of the repeated items they judged both times, how many got the same verdict (sides swapped)."""
    shows: dict[tuple[str, int], dict[bool, Outcome]] = defaultdict(dict)
    for reviewer, item, repeat, outcome in judged:
        shows[(reviewer, item)][repeat] = outcome
    found: dict[str, list[bool]] = defaultdict(list)
    for (reviewer, _), seen in shows.items():
        found.setdefault(reviewer, [])
        if len(seen) == 2:
            found[reviewer].append(seen[False] == seen[True])
    return [Consistency(reviewer=r, repeats=len(same), consistent=sum(same),
                        rate=_round(sum(same) / len(same)) if same else None) for r, same in sorted(found.items())]


def judge_agreement(firsts: list[Judged], judge: dict[int, str]) -> JudgeAgreement:
    """The LLM judge against the human majority per item ('both bad' counts as a tie; items without a strict
    majority are left out)."""
    if not judge:
        return JudgeAgreement(reason="no LLM judge verdicts for these items (the judge did not run on the "
                                     "evaluation, or the round samples traffic)")
    votes: dict[int, Counter] = defaultdict(Counter)
    for _, item, _, outcome in firsts:
        votes[item]["tie" if outcome == "both_bad" else outcome] += 1
    humans, machine = [], []
    for item, counted in votes.items():
        ranked = counted.most_common(2)
        if item in judge and (len(ranked) == 1 or ranked[0][1] > ranked[1][1]):
            humans.append(ranked[0][0])
            machine.append(judge[item])
    if not humans:
        return JudgeAgreement(reason="no item has both a judge verdict and a human majority yet")
    agreeing = sum(a == b for a, b in zip(humans, machine, strict=True))
    return JudgeAgreement(items=len(humans), agreeing=agreeing, rate=_round(agreeing / len(humans)),
                          kappa=_round(cohens_kappa(humans, machine)))


def summarize(round_id: str, candidates: list[str], judged: list[Judged], judge: dict[int, str]) -> Results:
    """The results of a round from its judgments (reviewer, item, repeat, outcome) and the judge's verdicts."""
    firsts = [j for j in judged if not j[2]]
    counted = Counter(reviewer for reviewer, *_ in firsts)
    both_bad = sum(outcome == "both_bad" for *_, outcome in firsts)
    return Results(round=round_id, judgments=len(firsts),
                   reviewers=[ReviewerCount(reviewer=r, judgments=n) for r, n in sorted(counted.items())],
                   candidates=candidate_results(candidates, firsts),
                   both_bad_rate=_round(both_bad / len(firsts)) if firsts else None,
                   agreement=reviewer_agreement(firsts), consistency=self_consistency(judged),
                   judge_agreement=judge_agreement(firsts, judge))


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)
