"""Paired bootstrap intervals and McNemar's test against reference values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from hone.eval.stats import is_binary, mcnemar, paired_bootstrap_ci


def test_bootstrap_interval_matches_scipy_on_the_same_differences():
    rng = np.random.default_rng(7)
    base = rng.uniform(0, 100, 80)
    tuned = np.clip(base + rng.normal(6, 15, 80), 0, 100)
    ours = paired_bootstrap_ci(list(base), list(tuned), resamples=20_000)
    reference = stats.bootstrap(((tuned - base),), np.mean, n_resamples=20_000, method="percentile",
                                confidence_level=0.95, random_state=1).confidence_interval
    assert ours["delta"] == pytest.approx(float(np.mean(tuned - base)), abs=0.01)
    assert ours["ci_low"] == pytest.approx(reference.low, abs=0.4)
    assert ours["ci_high"] == pytest.approx(reference.high, abs=0.4)
    assert ours["examples"] == 80 and ours["excludes_zero"] == (reference.low > 0)


def test_bootstrap_edge_cases():
    constant = paired_bootstrap_ci([10.0, 20.0, 30.0], [15.0, 25.0, 35.0])
    assert (constant["delta"], constant["ci_low"], constant["ci_high"]) == (5.0, 5.0, 5.0)
    assert constant["excludes_zero"]
    assert paired_bootstrap_ci([None, 1.0], [2.0, None]) is None
    mixed = paired_bootstrap_ci([0.0, 100.0, None], [100.0, 100.0, 0.0])
    assert mixed["examples"] == 2 and mixed["delta"] == 50.0


def test_mcnemar_exact_and_chi_square_against_hand_computed_values():
    # 1 pair where only the base is right, 9 where only the candidate is: exact two-sided binomial
    # p = 2 * (C(10,0) + C(10,1)) / 2**10 = 22 / 1024
    small = mcnemar([True] * 1 + [False] * 9 + [True] * 5, [False] * 1 + [True] * 9 + [True] * 5)
    assert (small["base_only"], small["candidate_only"], small["method"]) == (1, 9, "exact binomial")
    assert small["p_value"] == pytest.approx(22 / 1024)
    # b = 121, c = 59: chi-square with continuity correction (|121 - 59| - 1)^2 / 180 = 20.6722
    base = [True] * 121 + [False] * 59 + [True] * 101 + [False] * 33
    tuned = [False] * 121 + [True] * 59 + [True] * 101 + [False] * 33
    large = mcnemar(base, tuned)
    assert large["statistic"] == pytest.approx(20.6722, abs=1e-4)
    assert large["p_value"] == pytest.approx(5.45e-6, rel=0.01)
    assert mcnemar([True, False], [True, False])["p_value"] == 1.0


def test_is_binary():
    assert is_binary([0.0, 100.0, None]) and not is_binary([0.0, 50.0]) and not is_binary([None])
