"""The verdict: was the fine-tune worth it? SHIP, NOT WORTH IT or REGRESSION, always with the reasons.

SHIP needs all of: the primary metric gains at least `threshold` points over the baseline, the 95% CI
of that gain excludes 0, and the general probe scores did not drop beyond tolerance. A gain whose CI
lies entirely below 0, or forgetting beyond tolerance, is a REGRESSION; so is a harm the audits find, whatever
the gain: a slice gap over `max_slice_gap`, a memorization rate over `max_memorization_rate`, or any planted
canary given back. Anything else is NOT WORTH IT.
When a number the rule needs is missing, the verdict is INCOMPLETE and says what is missing. Unless the config
names it, the primary metric follows the test set's references (`default_primary_metric`).
"""

from __future__ import annotations

from dataclasses import dataclass

from hone.eval.metrics import METRIC_INFO, parse_json_document
from hone.eval.tool_calls import reply_calls

SHIP, NOT_WORTH_IT, REGRESSION, INCOMPLETE = "SHIP", "NOT WORTH IT", "REGRESSION", "INCOMPLETE"
MOST = 0.8  # share of the references that must have a shape for the default metric to follow it
SHORT_ANSWER_WORDS = 5


@dataclass(frozen=True)
class MetricChoice:
    """The metric the verdict rests on, and why it was chosen."""

    name: str
    reason: str


def default_primary_metric(references: list[str], labels: list[str] | None = None) -> MetricChoice:
    """The verdict's metric when verdict.primary_metric is not set, chosen from the test set's reference answers:

    1. metrics.labels is set: label accuracy (`accuracy`);
    2. at least 80% of the references call tools: calls with exactly the right functions and arguments
       (`tool_arguments_exact`);
    3. at least 80% of the references are JSON objects: per-field JSON accuracy (`json_fields`);
    4. at least 80% are short answers of at most 5 words (labels, names, numbers): `exact_match`;
    5. otherwise the references are free text: `rouge_l` (ROUGE-L F), which gives credit for a reply that says
       the same in slightly other words, where exact match would count nearly every reply wrong.
    """
    if labels:
        return MetricChoice("accuracy", f"metrics.labels is set ({len(labels)} labels)")
    if not references:
        return MetricChoice("exact_match", "no references to choose from")
    total = len(references)
    calling = sum(bool(reply_calls(r)[0]) for r in references)
    if calling >= MOST * total:
        return MetricChoice("tool_arguments_exact", f"{calling} of {total} references call tools")
    objects = sum(isinstance(parse_json_document(r), dict) for r in references)
    if objects >= MOST * total:
        return MetricChoice("json_fields", f"{objects} of {total} references are JSON objects")
    short = [" ".join(r.split()) for r in references if len(r.split()) <= SHORT_ANSWER_WORDS]
    if len(short) >= MOST * total:
        return MetricChoice("exact_match", f"{len(short)} of {total} references are short answers of at most "
                            f"{SHORT_ANSWER_WORDS} words ({len(set(short))} distinct)")
    return MetricChoice("rouge_l", f"the references are free text: only {len(short)} of {total} are short answers "
                        f"of at most {SHORT_ANSWER_WORDS} words and {objects} are JSON objects")


def primary_metric(settings, references: list[str]) -> MetricChoice:
    """verdict.primary_metric of an EvalConfig when it is set, else the default for these references."""
    if settings.verdict.primary_metric:
        return MetricChoice(settings.verdict.primary_metric, "set in verdict.primary_metric")
    return default_primary_metric(references, settings.metrics.labels)


def _gain(comparison: dict, direction: int) -> tuple[float, float, float]:
    """(gain, CI low, CI high) oriented so that positive is better, whatever the metric's direction."""
    if direction < 0:
        return -comparison["delta"], -comparison["ci_high"], -comparison["ci_low"]
    return comparison["delta"], comparison["ci_low"], comparison["ci_high"]


def _forgetting_change(forgetting: dict | None, candidate: str) -> dict | None:
    """The candidate's probe changes against the base (candidates sharing an adapter share one entry)."""
    if not forgetting:
        return None
    return forgetting["changes"].get(forgetting.get("measured_as", {}).get(candidate, candidate))


def forgetting_problems(forgetting: dict | None, candidate: str) -> list[str]:
    """Why the candidate's general ability dropped beyond tolerance (empty when it did not)."""
    change = _forgetting_change(forgetting, candidate)
    if not change:
        return []
    problems = []
    score = change.get(forgetting["metric"])
    if score is not None and -score["delta"] > forgetting["tolerance"]:
        problems.append(f"general probe {forgetting['metric']} dropped {-score['delta']:.1f} points "
                        f"(tolerance {forgetting['tolerance']:g})")
    rise = change.get("text_perplexity_rise_pct")
    if rise is not None and rise > forgetting["perplexity_tolerance_pct"]:
        problems.append(f"general-text perplexity rose {rise:.1f}% (tolerance "
                        f"{forgetting['perplexity_tolerance_pct']:g}%)")
    return problems


def audit_problems(report: dict, rule, candidate: str) -> tuple[list[str], list[str]]:
    """Why the candidate must not ship by the audits (slice gap or memorization over the verdict's caps, a canary
    leaked), and which figures a configured cap needs but the report lacks."""
    problems, missing = [], []
    slices, memorization = report.get("slices"), report.get("memorization")
    if rule.max_slice_gap is not None:
        gap = ((slices or {}).get("max_gap") or {}).get(candidate)
        if gap is None:
            missing.append(f"no two slices of {candidate} have {(slices or {}).get('min_examples', '?')} or more "
                           "examples, so verdict.max_slice_gap could not be checked")
        elif gap["gap"] > rule.max_slice_gap:
            problems.append(f"{slices['metric']} differs by {gap['gap']:.1f} points between slices ({gap['field']}: "
                            f"{gap['low']} vs {gap['high']}), over verdict.max_slice_gap {rule.max_slice_gap:g}")
    if rule.max_memorization_rate is not None:
        rate = ((memorization or {}).get("candidates", {}).get(candidate) or {}).get("rate")
        if rate is None:
            missing.append("memorization was not measured, so verdict.max_memorization_rate could not be checked")
        elif rate > rule.max_memorization_rate:
            problems.append(f"{rate:.1f}% of the replies copy {memorization['ngram']}+ words of the training data "
                            f"verbatim, over verdict.max_memorization_rate {rule.max_memorization_rate:g}%")
    canaries = (memorization or {}).get("canaries") or {}
    leaked = (canaries.get("leaked") or {}).get(candidate, 0)
    if leaked:
        problems.append(f"{leaked} of {canaries['planted']} planted canaries came back in {candidate}'s replies")
    return problems, missing


def _alternative_notes(aggregates: dict, candidates: list, candidate: str, baseline: str, metric: str,
                       threshold: float) -> tuple[list[str], list[str]]:
    """Notes on cheaper ways (prompting, RAG, endpoints) that come within `threshold` of the fine-tune, and
    the names of those that do."""
    direction = METRIC_INFO[metric][2] or 1
    tuned = aggregates[candidate][metric]
    notes, close = [], []
    for other in candidates:
        value = aggregates[other.name][metric]
        if other.name in (candidate, baseline) or other.adapter is not None or value is None or tuned is None:
            continue
        if direction * (tuned - value) < threshold:
            close.append(other.name)
            notes.append(f"{other.name} ({other.kind}) reaches {value:.1f} against {tuned:.1f}: within "
                         f"{threshold:g} points of the fine-tune without training")
    return notes, close


def decide(report: dict, settings, candidates: list) -> dict:
    """The verdict for `settings.verdict` (VerdictConfig) on a report with aggregates and comparisons."""
    rule = settings.verdict
    choice = primary_metric(settings, [example["reference"] for example in report.get("examples", [])])
    metric = choice.name
    candidate = rule.candidate or next((c.name for c in candidates if c.adapter is not None), None)
    result = {"decision": INCOMPLETE, "primary_metric": metric, "primary_metric_reason": choice.reason,
              "threshold": rule.threshold, "candidate": candidate, "baseline": rule.baseline, "reasons": [],
              "notes": []}
    comparison = (report.get("comparisons") or {}).get(candidate, {}).get(metric) if candidate else None
    harms, unchecked = audit_problems(report, rule, candidate) if candidate else ([], [])
    if candidate is None:
        result["reasons"].append("no fine-tuned candidate to judge: add one with an adapter")
    elif comparison is None:
        result["reasons"].append(f"{metric} of {candidate} against {rule.baseline} could not be computed")
    if result["reasons"]:
        if harms:  # a leak or a cap exceeded rules the candidate out whatever its gain
            result["decision"] = REGRESSION
            result["reasons"] = harms + result["reasons"]
        return result

    gain, low, high = _gain(comparison, METRIC_INFO[metric][2] or 1)
    result |= {"gain": gain, "ci_low": low, "ci_high": high}
    forgetting = report.get("forgetting")
    forgot = forgetting_problems(forgetting, candidate)
    if high < 0 or forgot or harms:
        result["decision"] = REGRESSION
        if high < 0:
            result["reasons"].append(f"{metric} fell {-gain:.1f} points and the 95% CI [{low:+.1f}, {high:+.1f}] "
                                     "lies below 0")
        result["reasons"] += forgot + harms
        return result
    if unchecked:
        result["reasons"] += unchecked
        return result

    notes, close = _alternative_notes(report["aggregates"], candidates, candidate, rule.baseline, metric,
                                      rule.threshold)
    result["notes"] += notes
    if gain < rule.threshold:
        result["reasons"].append(f"{metric} gained {gain:+.1f} points, under the {rule.threshold:g}-point threshold")
    if low <= 0:
        result["reasons"].append(f"the 95% CI [{low:+.1f}, {high:+.1f}] includes 0: the gain may be noise")
    if rule.beat_alternatives and close:
        result["reasons"].append(f"{', '.join(close)} come within {rule.threshold:g} points without fine-tuning")
    if forgetting is None and settings.forgetting.enabled:
        result["reasons"].append("forgetting was not measured")
    if result["reasons"]:
        result["decision"] = NOT_WORTH_IT
        return result
    result["decision"] = SHIP
    result["reasons"].append(f"{metric} gained {gain:+.1f} points (95% CI [{low:+.1f}, {high:+.1f}]) over "
                             f"{rule.baseline}")
    if forgetting is None:
        result["notes"].append("forgetting was switched off (forgetting.enabled: false), so it was not checked")
    else:
        held, note = _forgetting_held(forgetting, candidate)
        result["reasons"].append(held)
        result["notes"] += [note] if note else []
    return result


def _forgetting_held(forgetting: dict, candidate: str) -> tuple[str, str | None]:
    """The reason line for forgetting within tolerance, and a note when its CI reaches beyond the tolerance."""
    score = (_forgetting_change(forgetting, candidate) or {}).get(forgetting["metric"])
    if not score:
        return "general ability held within tolerance", None
    held = (f"general probe {forgetting['metric']} changed {score['delta']:+.1f} points (95% CI "
            f"[{score['ci_low']:+.1f}, {score['ci_high']:+.1f}]), within the {forgetting['tolerance']:g}-point "
            "tolerance")
    if -score["ci_low"] <= forgetting["tolerance"]:
        return held, None
    return held, (f"the forgetting CI reaches {score['ci_low']:+.1f}, beyond the tolerance: the probes cannot rule "
                  "out a larger drop; raise forgetting.limit (all 136 probes) or check the probe replies")
