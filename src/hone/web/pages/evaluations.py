"""The evaluations section of the dashboard: every evaluation the project's versions carry, and one evaluation's
candidates side by side with 95% CIs, its verdict and reasons, its charts (changes with CIs, confusion matrices,
forgetting, drawn by `hone.eval.charts` from the API's figures) and an example browser whose replies are diffed
word by word against the reference or the baseline's reply."""

from __future__ import annotations

import difflib
import re
from typing import Any

from fastapi import APIRouter, Request
from markupsafe import Markup, escape
from starlette.concurrency import run_in_threadpool

from hone.eval import charts
from hone.web.core import Api, ApiFailure, VisitorDep, path_part, render

router = APIRouter()

PAGE_SIZE = 10
FILTERS = (("all", "All examples"), ("wrong", "Wrong only"), ("disagree", "Fine-tune and baseline disagree"),
           ("judge_disagree", "Judge disagrees with the metric"))
DIFF_AGAINST = (("reference", "the reference"), ("baseline", "the baseline's reply"))
_WORDS = re.compile(r"(\s+)")  # split into words, keeping the whitespace between them as tokens of its own


def word_diff(before: str | None, after: str | None) -> Markup:
    """`after` marked against `before` word by word: words only in `after` in <ins>, words only in `before` in
    <del>. Every piece of text is escaped before it is wrapped."""
    old, new = _WORDS.split(before or ""), _WORDS.split(after or "")
    pieces = []
    for operation, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        removed, added = escape("".join(old[i1:i2])), escape("".join(new[j1:j2]))
        if operation == "equal":
            pieces.append(added)
        if operation in ("delete", "replace") and removed:
            pieces.append(Markup("<del>{}</del>").format(removed))
        if operation in ("insert", "replace") and added:
            pieces.append(Markup("<ins>{}</ins>").format(added))
    return Markup("").join(pieces)


def _charts(report: dict[str, Any]) -> list[tuple[str, Markup]]:
    """(title, SVG) of each chart the report has figures for; the SVG is ours (matplotlib escapes its text)."""
    drawn = []
    if report.get("deltas") and report.get("baseline"):
        comparisons: dict[str, dict] = {}
        for row in report["deltas"]:
            for name, change in row["changes"].items():
                comparisons.setdefault(name, {})[row["metric"]] = change
        labels = {row["metric"]: row["label"] for row in report["deltas"]}
        drawn.append(("Changes against the baseline with 95% CIs",
                      charts.delta_chart(comparisons, list(labels), labels, report["baseline"])))
    for name, found in (report.get("classification") or {}).items():
        drawn.append((f"{name}: confusion matrix",
                      charts.confusion_chart(found["labels"], found["confusion"], f"{name}: confusion matrix")))
    if report.get("forgetting"):
        measures = {"answer_match": "short answers right %", "token_f1": "token F1 %"}
        scores = {model: {label: values.get(key) for key, label in measures.items()}
                  for model, values in report["forgetting"]["models"].items()}
        drawn.append(("Forgetting: general probe scores", charts.forgetting_chart(scores, "General probe scores")))
    return [(title, Markup(svg)) for title, svg in drawn if svg]


async def _reviews(api: Api, evaluation_id: str) -> tuple[list[dict], str | None]:
    """The human review rounds of the evaluation, each with its results, or the API's message when the visitor may
    not see them (reviewers stay blind to which candidate wins)."""
    try:
        rounds = (await api.get("/v1/reviews", evaluation=evaluation_id))["data"]
    except ApiFailure as failure:
        if failure.status == 403:
            return [], failure.message
        raise
    return [{"round": found, "results": await api.get(f"/v1/reviews/{path_part(found['id'])}/results")}
            for found in rounds], None


def _diffed(examples: list[dict], baseline: str, against: str) -> list[dict]:
    """Each example with every reply's diff against the reference (or against the baseline's reply)."""
    for example in examples:
        for name, reply in example["outputs"].items():
            before = example["reference"] if against == "reference" else example["outputs"][baseline]["text"]
            reply["diff"] = word_diff(before, reply["text"]) if against == "reference" or name != baseline else None
    return examples


@router.get("/evaluations")
async def evaluation_list(request: Request, visitor: VisitorDep, api: Api):
    """The project's evaluations, newest first, each linking to its page."""
    evaluations = await api.get("/v1/evaluations")
    return render(request, visitor, "evaluations/list.html", evaluations=evaluations["data"])


@router.get("/evaluations/{evaluation_id}")
async def evaluation_page(request: Request, evaluation_id: str, visitor: VisitorDep, api: Api,
                          filter: str = "all", offset: int = 0, diff: str = "reference"):
    """One evaluation: verdict, candidates with CIs, charts, human review, and a page of the examples `filter`
    keeps (the API refuses an unknown one) with replies diffed against the reference or the baseline (`diff`)."""
    path = f"/v1/evaluations/{path_part(evaluation_id)}"
    report = await api.get(path)
    examples, examples_refused = None, None
    if report["report_available"]:
        try:
            examples = await api.get(f"{path}/examples", filter=filter, offset=offset, limit=PAGE_SIZE)
            _diffed(examples["data"], examples["baseline"], "baseline" if diff == "baseline" else "reference")
        except ApiFailure as failure:
            if failure.status != 403:  # a blind reviewer: the rest of the report still shows
                raise
            examples_refused = failure.message
    drawn = await run_in_threadpool(_charts, report) if report["report_available"] else []
    reviews, reviews_refused = await _reviews(api, report["id"])
    return render(request, visitor, "evaluations/evaluation.html", report=report, examples=examples, charts=drawn,
                  filters=FILTERS, diff_choices=DIFF_AGAINST, diff="baseline" if diff == "baseline" else "reference",
                  page_size=PAGE_SIZE, reviews=reviews, reviews_refused=reviews_refused,
                  examples_refused=examples_refused)
