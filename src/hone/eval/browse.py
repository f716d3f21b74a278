"""An evaluation report as the dashboard browses it: each candidate's metrics with their 95% CIs, and the
examples worth reading — the ones the fine-tune got wrong, the ones where it and the baseline score differently,
the ones where the LLM judge contradicts the metric.

"Wrong" is judged on the verdict's primary metric: a reply is right with full marks on it (100, or 5 for the
judge's 1-5 score). A primary metric without full marks (perplexity, length, latency, reading grade) is replaced
by exact match for this.
"""

from __future__ import annotations

from typing import Any

from hone.eval.slices import metric_intervals

FILTERS = ("all", "wrong", "disagree", "judge_disagree")
# Metrics whose best score is a fixed number, so a reply can be called right or wrong by them.
FULL_MARKS = {"exact_match": 100, "token_f1": 100, "rouge_l": 100, "bleu": 100, "chrf": 100, "accuracy": 100,
              "json_valid": 100, "json_schema": 100, "json_fields": 100, "style_pass": 100, "judge_score": 5,
              "tool_name_accuracy": 100, "tool_arguments_exact": 100, "tool_argument_accuracy": 100,
              "no_call_accuracy": 100, "tool_call_parse_rate": 100}
JUDGE_HIGH, JUDGE_LOW = 4, 2  # a rubric score this high calls a reply good, this low bad


def focus(report: dict[str, Any]) -> tuple[str, str]:
    """(the candidate under evaluation, its baseline): the verdict's candidate, else the last other one."""
    baseline = report["baseline"]
    names = [c["name"] for c in report["candidates"]]
    candidate = (report.get("verdict") or {}).get("candidate") or next(
        (name for name in reversed(names) if name != baseline), baseline)
    return candidate, baseline


def outcome_metric(report: dict[str, Any]) -> str:
    """The metric that calls a reply right or wrong: the verdict's primary metric when it has full marks."""
    primary = (report.get("verdict") or {}).get("primary_metric")
    return primary if primary in FULL_MARKS else "exact_match"


def candidate_intervals(report: dict[str, Any]) -> dict[str, dict[str, dict]]:
    """Per candidate, every metric's mean over the test examples with its bootstrap 95% CI (the report keeps the
    means; the intervals are computed here from the per-example scores, with the report's seed)."""
    seed = (report.get("config") or {}).get("seed", 0)
    return {c["name"]: metric_intervals([e["outputs"][c["name"]]["scores"] for e in report["examples"]], seed)
            for c in report["candidates"]}


def is_right(example: dict[str, Any], candidate: str, metric: str) -> bool | None:
    """Whether the candidate's reply got full marks on `metric` (None when it was not scored)."""
    score = example["outputs"][candidate]["scores"].get(metric)
    return None if score is None else score >= FULL_MARKS[metric]


def _judge_calls(report: dict[str, Any], candidate: str) -> tuple[list | None, bool]:
    """The pairwise judge's outcome per example for the candidate (win, loss, tie, None), or None without one;
    and whether the judge ran at all."""
    judge = report.get("judge") or {}
    pairwise = (judge.get("pairwise") or {}).get(candidate)
    return (pairwise or {}).get("outcomes"), bool(judge) and judge.get("status") in ("ok", "partial")


def judge_disagrees(example: dict[str, Any], outcome: str | None, candidate: str, baseline: str,
                    metric: str) -> bool:
    """True when the judge contradicts the metric: the pairwise judge says the candidate won where the metric
    scores it below the baseline (or lost where above), or, without a pairwise outcome, its rubric scores a
    wrong reply high or a right one low."""
    scores = example["outputs"]
    ours, theirs = scores[candidate]["scores"].get(metric), scores[baseline]["scores"].get(metric)
    if outcome in ("win", "loss") and ours is not None and theirs is not None:
        return (outcome == "win" and ours < theirs) or (outcome == "loss" and ours > theirs)
    rubric, right = scores[candidate]["scores"].get("judge_score"), is_right(example, candidate, metric)
    if rubric is None or right is None:
        return False
    return (rubric >= JUDGE_HIGH and not right) or (rubric <= JUDGE_LOW and right)


def matching_examples(report: dict[str, Any], which: str) -> list[dict[str, Any]]:
    """The report's examples that `which` (one of FILTERS) keeps, in order: all; wrong (the candidate's reply
    is not right); disagree (the candidate and the baseline score differently on the outcome metric);
    judge_disagree (the judge contradicts the metric, see `judge_disagrees`)."""
    if which not in FILTERS:
        raise ValueError(f"filter must be one of {', '.join(FILTERS)}")
    candidate, baseline = focus(report)
    metric = outcome_metric(report)
    examples = report["examples"]
    if which == "wrong":
        return [e for e in examples if not is_right(e, candidate, metric)]
    if which == "disagree":
        return [e for e in examples if e["outputs"][candidate]["scores"].get(metric)
                != e["outputs"][baseline]["scores"].get(metric)]
    if which == "judge_disagree":
        outcomes, _ = _judge_calls(report, candidate)
        return [e for i, e in enumerate(examples)
                if judge_disagrees(e, outcomes[i] if outcomes and i < len(outcomes) else None, candidate, baseline,
                                   metric)]
    return list(examples)


def judged(report: dict[str, Any]) -> bool:
    """Whether an LLM judge scored this evaluation (so the judge filter can find anything)."""
    return _judge_calls(report, focus(report)[0])[1]


def judge_outcome(report: dict[str, Any], index: int) -> str | None:
    """The pairwise judge's outcome for the candidate on example `index` (win, loss, tie), None without one."""
    outcomes, _ = _judge_calls(report, focus(report)[0])
    return outcomes[index] if outcomes and index < len(outcomes) else None

