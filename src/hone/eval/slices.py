"""Bias audit: every metric sliced by the metadata the test examples carry (region, language, segment ...).

Each slice gets its size and, per candidate, every metric's mean with a bootstrap 95% CI (the same resampling
as the comparisons). The largest gap of the primary metric between two slices of one field tells how unevenly a
candidate serves the groups; slices under `min_examples` are shown but left out of it, since their means are
mostly noise. Examples without a named field form the slice "(missing)".
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from hone.errors import HoneError
from hone.eval.metrics import METRICS, aggregate
from hone.eval.stats import bootstrap_mean_ci

MISSING = "(missing)"


def slice_value(metadata: dict[str, Any], name: str) -> str:
    """The slice an example falls in for field `name`: its value as text, or "(missing)"."""
    value = metadata.get(name)
    if value is None or value == "":
        return MISSING
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)


def check_slice_fields(metadata: list[dict[str, Any]], fields: list[str], source: Path | str) -> list[str]:
    """Raise when a field is on none of the examples; else warnings counting the examples that lack one."""
    warnings = []
    present = sorted({key for item in metadata for key in item})
    for name in fields:
        missing = sum(slice_value(item, name) == MISSING for item in metadata)
        if missing == len(metadata):
            close = difflib.get_close_matches(name, present, n=1)
            hint = (f"did you mean '{close[0]}'? " if close else "") + (
                f"the examples carry: {', '.join(present)}" if present else
                "the examples carry no metadata: add the key to each line, or a \"metadata\" object")
            raise HoneError(f"slices.fields: '{name}' is on none of the {len(metadata)} examples of {source}",
                            hint=hint)
        if missing:
            warnings.append(f"slices: {missing} of {len(metadata)} examples have no '{name}'; they form the slice "
                            f"'{MISSING}'")
    return warnings


def _digits(metric: str) -> int:
    return 3 if metric in ("latency_s", "perplexity") else 2


def metric_intervals(scores: list[dict], seed: int = 0) -> dict[str, dict]:
    """Every metric's mean (as `aggregate` computes it) with its bootstrap 95% CI; None where it does not apply."""
    means = aggregate(scores)
    result = {}
    for metric in METRICS:
        interval = (bootstrap_mean_ci([s.get(metric) for s in scores], seed=seed, geometric=metric == "perplexity")
                    if means[metric] is not None else None)
        low, high = (round(v, _digits(metric)) for v in interval) if interval else (None, None)
        result[metric] = {"mean": means[metric], "ci_low": low, "ci_high": high}
    return result


def _largest_gap(groups: list[dict], candidate: str, metric: str, min_examples: int) -> dict | None:
    """The largest difference of `metric` means between two slices of one field with enough examples."""
    best = None
    for name in dict.fromkeys(g["field"] for g in groups):
        means = [(g["candidates"][candidate][metric]["mean"], g["value"]) for g in groups
                 if g["field"] == name and g["n"] >= min_examples and metric in g["candidates"][candidate]
                 and g["candidates"][candidate][metric]["mean"] is not None]
        if len(means) < 2:
            continue
        (low, low_value), (high, high_value) = min(means), max(means)
        if best is None or high - low > best["gap"]:
            best = {"gap": round(high - low, _digits(metric)), "field": name, "low": low_value, "high": high_value}
    return best


def slice_report(scores: dict[str, list[dict]], metadata: list[dict[str, Any]], fields: list[str],
                 min_examples: int, metric: str, source: Path | str = "the test file",
                 seed: int = 0) -> tuple[dict, list[str]]:
    """The `slices` section of the report and its warnings.

    `scores[candidate]` holds each example's metric scores (as in the report's examples), `metadata` each
    example's metadata, in the same order. Per field and value: n and, per candidate, every metric's mean with
    its 95% CI; per candidate the largest gap of `metric` between slices of one field ("low" and "high" name
    the slices with the lower and the higher mean), or None when no field has two slices of `min_examples`.
    """
    warnings = check_slice_fields(metadata, fields, source)
    groups, small = [], []
    for name in fields:
        values = [slice_value(item, name) for item in metadata]
        for value in sorted(set(values), key=lambda v: (v == MISSING, v)):
            members = [i for i, v in enumerate(values) if v == value]
            groups.append({"field": name, "value": value, "n": len(members),
                           "candidates": {candidate: metric_intervals([rows[i] for i in members], seed)
                                          for candidate, rows in scores.items()}})
            if len(members) < min_examples:
                small.append(f"{name}={value} (n={len(members)})")
    if small:
        warnings.append(f"slices: {len(small)} slice(s) have fewer than {min_examples} examples and are left out of "
                        f"the largest gap: {', '.join(small)}")
    max_gap = {candidate: _largest_gap(groups, candidate, metric, min_examples) for candidate in scores}
    return {"fields": list(fields), "metric": metric, "min_examples": min_examples, "groups": groups,
            "max_gap": max_gap}, warnings
