"""Is a gain real? Paired bootstrap confidence intervals for metric deltas, McNemar's test for
right/wrong metrics.

Both models answer the same test examples, so the comparison is paired: resampling whole examples
(not each model's scores separately) keeps the per-example link and gives honest intervals even on
the 50-100 examples a typical fine-tuning test set has.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 10_000
EXACT_MCNEMAR_BELOW = 25  # discordant pairs; under this the chi-square approximation is poor


def paired_bootstrap_ci(base: list[float | None], candidate: list[float | None], resamples: int = RESAMPLES,
                        confidence: float = CONFIDENCE, seed: int = 0, geometric: bool = False) -> dict | None:
    """Mean of candidate - base over the examples scored for both, with its percentile bootstrap CI.

    With `geometric`, the statistic is the difference of geometric means (for perplexities, whose
    arithmetic mean one outlier dominates). None when no example has both scores. Seeded, so a report
    is reproducible.
    """
    pairs = [(b, c) for b, c in zip(base, candidate, strict=True) if b is not None and c is not None]
    if not pairs:
        return None
    values = np.array(pairs, dtype=np.float64)
    if geometric:
        values = np.log(values)
    picks = np.random.default_rng(seed).integers(0, len(values), size=(resamples, len(values)))
    means = values[picks].mean(axis=1)  # [resamples, 2]: base and candidate means of each resample
    point = values.mean(axis=0)
    if geometric:
        means, point = np.exp(means), np.exp(point)
    differences = means[:, 1] - means[:, 0]
    tail = (1 - confidence) / 2
    low, high = np.quantile(differences, [tail, 1 - tail])
    return {"delta": round(float(point[1] - point[0]), 2), "ci_low": round(float(low), 2),
            "ci_high": round(float(high), 2), "confidence": confidence, "examples": len(values),
            "excludes_zero": bool(low > 0 or high < 0)}


def ratio_bootstrap_ci(numerator: list[float | None], denominator: list[float | None], resamples: int = RESAMPLES,
                       confidence: float = CONFIDENCE, seed: int = 0) -> dict | None:
    """mean(numerator) / mean(denominator) over the examples scored for both (e.g. how much of a teacher's score a
    student keeps), with its paired percentile bootstrap CI; None when none is scored or the denominator's mean
    is 0. Resamples whose denominator mean is 0 are left out of the interval."""
    pairs = np.array([(n, d) for n, d in zip(numerator, denominator, strict=True) if n is not None and d is not None],
                     dtype=np.float64)
    if not len(pairs) or pairs[:, 1].mean() == 0:
        return None
    picks = np.random.default_rng(seed).integers(0, len(pairs), size=(resamples, len(pairs)))
    means = pairs[picks].mean(axis=1)
    usable = means[:, 1] > 0
    ratios = means[usable, 0] / means[usable, 1]
    tail = (1 - confidence) / 2
    low, high = np.quantile(ratios, [tail, 1 - tail])
    return {"ratio": round(float(pairs[:, 0].mean() / pairs[:, 1].mean()), 4), "ci_low": round(float(low), 4),
            "ci_high": round(float(high), 4), "confidence": confidence, "examples": len(pairs)}


def bootstrap_mean_ci(values: list[float | None], resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                      seed: int = 0, geometric: bool = False) -> tuple[float, float] | None:
    """The percentile bootstrap CI of the mean of the scored values (with `geometric`, of their geometric mean),
    resampled like `paired_bootstrap_ci`; None when no value is scored."""
    present = np.array([v for v in values if v is not None], dtype=np.float64)
    if not len(present):
        return None
    if geometric:
        present = np.log(present)
    picks = np.random.default_rng(seed).integers(0, len(present), size=(resamples, len(present)))
    means = present[picks].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(np.exp(means) if geometric else means, [tail, 1 - tail])
    return float(low), float(high)


def mcnemar(base_correct: list[bool], candidate_correct: list[bool]) -> dict:
    """McNemar's test on paired right/wrong outcomes.

    Only the discordant pairs count: b = base right and candidate wrong, c = base wrong and candidate
    right. With fewer than 25 of them the exact binomial test is used, otherwise the chi-square
    statistic with continuity correction.
    """
    b = sum(1 for x, y in zip(base_correct, candidate_correct, strict=True) if x and not y)
    c = sum(1 for x, y in zip(base_correct, candidate_correct, strict=True) if y and not x)
    if b + c == 0:
        return {"base_only": 0, "candidate_only": 0, "method": "none", "statistic": None, "p_value": 1.0}
    if b + c < EXACT_MCNEMAR_BELOW:
        p_value = stats.binomtest(min(b, c), b + c, 0.5).pvalue
        return {"base_only": b, "candidate_only": c, "method": "exact binomial", "statistic": None,
                "p_value": float(min(1.0, p_value))}
    statistic = (abs(b - c) - 1) ** 2 / (b + c)
    return {"base_only": b, "candidate_only": c, "method": "chi-square, continuity corrected",
            "statistic": round(statistic, 4), "p_value": float(stats.chi2.sf(statistic, df=1))}


def is_binary(values: list[float | None]) -> bool:
    """True when every score is 0 or 100 (a right/wrong metric such as exact match)."""
    present = [v for v in values if v is not None]
    return bool(present) and all(math.isclose(v, 0) or math.isclose(v, 100) for v in present)
