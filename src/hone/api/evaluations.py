"""`/v1/evaluations`: the evaluations the project's model versions carry, each with its full report (candidates,
metrics with 95% CIs, changes against the baseline with CIs, the verdict and its reasons, the confusion matrix,
forgetting, the judge) and its examples, filtered to the ones worth reading.

Ids are `eval-N` (`hone.eval.records`). Every role may read; another project's evaluation answers 404. The full
report is read from the report.json the evaluation wrote, at the place its database row records (never a path
from the request); when that file is gone the evaluation still lists, with `report_available` false. No answer
carries a server path: known ones become their last name, and the texts are scrubbed of any other.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from hone.api.auth import Viewer
from hone.api.errors import error_responses
from hone.api.keys import role_allows
from hone.api.registry import public_name, without_paths
from hone.errors import ForbiddenError, NotFoundError
from hone.eval import browse
from hone.eval.human_review import ReviewStore
from hone.eval.metrics import METRIC_INFO
from hone.eval.records import EvaluationRecord, get_evaluation, list_evaluations
from hone.eval.report import shown_metrics
from hone.home import hone_home

router = APIRouter(tags=["evaluations"])
MAX_EXAMPLES_PAGE = 100
Filter = Literal["all", "wrong", "disagree", "judge_disagree"]


class EvaluationSummary(BaseModel):
    """One evaluation a version carries: against the base model (`against` null) or another version."""

    object: Literal["evaluation"] = "evaluation"
    id: str = Field(description="eval-N")
    version: str = Field(description="The model version evaluated.")
    model: str | None = Field(None, description="The model the version belongs to.")
    against: str | None = Field(None, description="The version it was compared with; null: the base model.")
    verdict: str | None = Field(None, description="SHIP, NOT WORTH IT, REGRESSION or INCOMPLETE.")
    reasons: list[str] = []
    primary_metric: str | None = None
    actor: str | None = None
    created_at: str
    report_available: bool = Field(description="Whether the full report (metrics, examples) is still on disk.")


class EvaluationList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EvaluationSummary]
    has_more: bool = False


class Candidate(BaseModel):
    name: str
    kind: str


class Interval(BaseModel):
    """A candidate's mean of one metric over the test examples, with its bootstrap 95% CI."""

    value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None


class MetricRow(BaseModel):
    metric: str
    label: str
    direction: int = Field(description="1: higher is better, -1: lower is better, 0: neither.")
    values: dict[str, Interval] = Field(description="Per candidate.")


class Change(BaseModel):
    """A candidate minus the baseline, with the paired bootstrap 95% CI (and McNemar's p for right/wrong metrics)."""

    delta: float
    ci_low: float
    ci_high: float
    excludes_zero: bool
    mcnemar_p: float | None = None


class DeltaRow(BaseModel):
    metric: str
    label: str
    changes: dict[str, Change | None] = Field(description="Per candidate other than the baseline.")


class Verdict(BaseModel):
    decision: str
    candidate: str | None = None
    baseline: str | None = None
    primary_metric: str
    primary_metric_reason: str | None = None
    threshold: float | None = None
    gain: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    reasons: list[str] = []
    notes: list[str] = []


class Classification(BaseModel):
    """Label accuracy of one candidate and its confusion matrix: rows are reference labels, columns the predicted
    labels then one for replies without a label."""

    labels: list[str]
    accuracy: float | None = None
    macro_f1: float | None = None
    confusion: list[list[int]]
    unlabelled_replies: int = 0


class ForgettingChange(BaseModel):
    answer_match: Change | None = None
    token_f1: Change | None = None
    text_perplexity_rise_pct: float | None = None


class Forgetting(BaseModel):
    """General probes asked of the base and of each fine-tune: their scores, and each fine-tune's change."""

    probes: int
    metric: str
    tolerance: float
    models: dict[str, dict[str, float | None]] = Field(description="answer_match, token_f1, text_perplexity.")
    changes: dict[str, ForgettingChange]


class RubricScore(BaseModel):
    mean: float | None = None
    scored: int = 0
    failed: int = 0


class PairwiseScore(BaseModel):
    against: str
    wins: int
    losses: int
    ties: int
    failed: int = 0
    flip_rate: float | None = None


class Judge(BaseModel):
    status: str
    message: str | None = None
    model: str | None = None
    rubric: dict[str, RubricScore] | None = None
    pairwise: dict[str, PairwiseScore] | None = None


class EvaluationReport(EvaluationSummary):
    """The full report: candidates side by side, the verdict, and the pieces its charts are drawn from."""

    object: Literal["evaluation.report"] = "evaluation.report"  # type: ignore[assignment]
    base_model: str | None = None
    examples: int = 0
    candidates: list[Candidate] = []
    candidate: str | None = Field(None, description="The candidate under evaluation (the example filters' focus).")
    baseline: str | None = Field(None, description="The candidate every change is measured against.")
    outcome_metric: str | None = Field(None, description="The metric that calls a reply right or wrong.")
    judged: bool = False
    metrics: list[MetricRow] = []
    deltas: list[DeltaRow] = []
    decision: Verdict | None = None
    classification: dict[str, Classification] | None = None
    forgetting: Forgetting | None = None
    judge: Judge | None = None
    warnings: list[str] = []


class Message(BaseModel):
    role: str
    content: str


class Reply(BaseModel):
    text: str | None = None
    label: str | None = None
    right: bool | None = Field(None, description="Full marks on the outcome metric (null: not scored).")
    scores: dict[str, float | None] = {}


class Example(BaseModel):
    index: int
    prompt: list[Message]
    reference: str
    outputs: dict[str, Reply] = Field(description="Per candidate.")
    judge: str | None = Field(None, description="The pairwise judge's outcome for the candidate: win, loss, tie.")


class ExampleList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Example]
    filter: Filter
    total: int = Field(description="How many examples the filter keeps (all pages).")
    offset: int
    limit: int
    has_more: bool
    candidate: str
    baseline: str


def _db(request: Request) -> str | None:
    return request.app.state.server.config.database


def _clean(value: Any, known: set[str]) -> Any:
    """`value` with every server path (those of the report, $HONE_HOME, any other absolute one) made a name."""
    if isinstance(value, dict):
        return {key: _clean(item, known) for key, item in value.items()}
    if isinstance(value, list):
        return [_clean(item, known) for item in value]
    return without_paths(value, {"known": sorted(known)}) if isinstance(value, str) else value


def _known_paths(report: dict[str, Any] | None) -> set[str]:
    """The report's own server paths (data, output, base, run and weights folders), to hide in replies too."""
    found: set[str] = {str(hone_home())}

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str) and value.startswith("/") and len(value) > 1:
            found.add(value)

    for part in ("config", "models", "paths"):
        walk((report or {}).get(part))
    return found


def _hidden_paths(text: str | None, known: set[str]) -> str | None:
    """A model's or a person's text with the report's server paths made names, nothing else touched."""
    if text is None:
        return None
    for path in sorted(known, key=len, reverse=True):
        text = text.replace(path, PurePath(path).name)
    return text


def _summary(record: EvaluationRecord, available: bool) -> dict[str, Any]:
    summary = record.summary
    return {"id": record.id, "version": record.version, "model": record.model, "against": record.against,
            "verdict": record.verdict, "reasons": [str(r) for r in summary.get("reasons") or []],
            "primary_metric": summary.get("primary_metric"), "actor": record.actor, "created_at": record.created_at,
            "report_available": available}


def _change(result: dict | None) -> dict | None:
    if not result:
        return None
    return {key: result[key] for key in ("delta", "ci_low", "ci_high", "excludes_zero")} | {
        "mcnemar_p": (result.get("mcnemar") or {}).get("p_value")}


def _metric_rows(report: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """Per shown metric: each candidate's value with its CI, and each other candidate's change with its CI."""
    intervals = browse.candidate_intervals(report)
    metrics, deltas = [], []
    for metric in shown_metrics(report):
        label, _, direction = METRIC_INFO[metric]
        metrics.append({"metric": metric, "label": label, "direction": direction, "values": {
            name: {"value": by_metric[metric]["mean"], "ci_low": by_metric[metric]["ci_low"],
                   "ci_high": by_metric[metric]["ci_high"]} for name, by_metric in intervals.items()}})
        deltas.append({"metric": metric, "label": label, "changes": {
            name: _change(comparison.get(metric)) for name, comparison in report["comparisons"].items()}})
    return metrics, deltas


def _forgetting(forgetting: dict | None) -> dict | None:
    if not forgetting:
        return None
    return {"probes": forgetting["probes"], "metric": forgetting["metric"], "tolerance": forgetting["tolerance"],
            "models": {name: {key: scores.get(key) for key in ("answer_match", "token_f1", "text_perplexity")}
                       for name, scores in forgetting["models"].items()},
            "changes": {name: {"answer_match": _change(change.get("answer_match")),
                               "token_f1": _change(change.get("token_f1")),
                               "text_perplexity_rise_pct": change.get("text_perplexity_rise_pct")}
                        for name, change in forgetting["changes"].items()}}


def _judge(judge: dict | None) -> dict | None:
    if not judge:
        return None
    return {key: judge.get(key) for key in ("status", "message", "model")} | {
        "rubric": {n: {k: r.get(k) for k in ("mean", "scored", "failed")} for n, r in judge["rubric"].items()}
        if judge.get("rubric") else None,
        "pairwise": {n: {k: p.get(k) for k in PairwiseScore.model_fields} for n, p in judge["pairwise"].items()}
        if judge.get("pairwise") else None}


def _full(record: EvaluationRecord, report: dict[str, Any]) -> dict[str, Any]:
    candidate, baseline = browse.focus(report)
    metrics, deltas = _metric_rows(report)
    config = report.get("config") or {}
    classification = {name: {key: summary.get(key) for key in Classification.model_fields}
                      for name, summary in (report.get("classification") or {}).items()}
    return _summary(record, True) | {
        "object": "evaluation.report", "base_model": public_name(config["base"]) if config.get("base") else None,
        "examples": len(report["examples"]), "candidates": report["candidates"], "candidate": candidate,
        "baseline": baseline, "outcome_metric": browse.outcome_metric(report), "judged": browse.judged(report),
        "metrics": metrics, "deltas": deltas, "decision": report.get("verdict"),
        "classification": classification or None, "forgetting": _forgetting(report.get("forgetting")),
        "judge": _judge(report.get("judge")), "warnings": report.get("warnings") or []}


def _example(example: dict[str, Any], report: dict[str, Any], known: set[str]) -> dict[str, Any]:
    candidate, _ = browse.focus(report)
    metric = browse.outcome_metric(report)
    return {"index": example["index"], "reference": _hidden_paths(example["reference"], known),
            "prompt": [{"role": m["role"], "content": _hidden_paths(str(m["content"]), known)}
                       for m in example["prompt"]],
            "outputs": {name: {"text": _hidden_paths(reply["text"], known), "label": reply.get("label"),
                               "right": browse.is_right(example, name, metric), "scores": reply["scores"]}
                        for name, reply in example["outputs"].items()},
            "judge": browse.judge_outcome(report, example["index"]) if candidate else None}


# What a report written by `hone eval` always holds; a file without them is shown as the summary alone.
FULL_REPORT_KEYS = frozenset({"candidates", "aggregates", "examples", "verdict"})


def _full_report(record: EvaluationRecord) -> dict[str, Any] | None:
    report = record.report()
    return report if report is not None and FULL_REPORT_KEYS <= report.keys() else None


def _report_of(record: EvaluationRecord) -> dict[str, Any]:
    report = _full_report(record)
    if report is None:
        raise NotFoundError(f"The full report of evaluation '{record.id}' is no longer on the server: evaluate the "
                            "version again", param="evaluation_id", code="report_not_found")
    return report


@router.get("/evaluations", response_model=EvaluationList)
def evaluations(me: Viewer, request: Request, version: str | None = None) -> dict:
    """The project's evaluations (of one version when `version` is given), newest first."""
    records = list_evaluations(me.project, _db(request), version=version)
    return {"data": [_clean(_summary(record, record.has_report()), _known_paths(None)) for record in records]}


@router.get("/evaluations/{evaluation_id}", response_model=EvaluationReport, responses=error_responses(404))
def evaluation(me: Viewer, request: Request, evaluation_id: str) -> dict:
    """One evaluation's full report: candidates side by side with 95% CIs, changes against the baseline, the
    verdict with its reasons, the confusion matrix, forgetting and the judge; without a report on disk, its
    summary alone."""
    record = get_evaluation(me.project, evaluation_id, _db(request))
    report = _full_report(record)
    shown = _full(record, report) if report is not None else _summary(record, False) | {"object": "evaluation.report"}
    return _clean(shown, _known_paths(report))


@router.get("/evaluations/{evaluation_id}/examples", response_model=ExampleList,
            responses=error_responses(400, 403, 404))
def evaluation_examples(me: Viewer, request: Request, evaluation_id: str, filter: Filter = "all",
                        offset: Annotated[int, Query(ge=0)] = 0,
                        limit: Annotated[int, Query(ge=1, le=MAX_EXAMPLES_PAGE)] = 20) -> dict:
    """The evaluation's test examples with each candidate's reply and scores: all of them, or those the filter
    keeps — `wrong` (the candidate's reply lacks full marks on the outcome metric), `disagree` (the candidate and
    the baseline score differently on it), `judge_disagree` (the LLM judge contradicts the metric)."""
    record = get_evaluation(me.project, evaluation_id, _db(request))
    if not role_allows(me.role, "developer") and ReviewStore(_db(request)).reviews_blind(me.project, record.id,
                                                                                         me.actor):
        raise ForbiddenError("you review a blind round sampled from this evaluation: its replies by candidate stay "
                             "hidden from you (a developer key can read them)", param="evaluation_id",
                             code="blind_reviewer")
    report = _report_of(record)
    kept = browse.matching_examples(report, filter)
    known = _known_paths(report)
    candidate, baseline = browse.focus(report)
    page = [_example(example, report, known) for example in kept[offset:offset + limit]]
    return {"data": page, "filter": filter, "total": len(kept), "offset": offset, "limit": limit,
            "has_more": offset + limit < len(kept), "candidate": candidate, "baseline": baseline}
