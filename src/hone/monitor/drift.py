"""Drift between a window of captured traffic and the model's training data.

Three signals, each a two-sample test that answers "does this window look like the reference?":

- `embedding_drift` (topic): prompt embeddings (all-MiniLM-L6-v2 via `embed_prompts`) compared by a domain
  classifier, Evidently's default embedding-drift method, and by MMD with a permutation p-value.
- `length_drift`: prompt lengths in tokens, two-sample Kolmogorov-Smirnov.
- `rate_drift`: a success rate such as format validity, Fisher's exact test.

A window smaller than `DriftConfig.min_window` is never scored: it comes back `status="insufficient"` with the
number of requests still `needed`. The defaults are calibrated by bench/drift_detection.py on templated support
tickets (reference: 1000 of them) against legal-contract and medical-billing questions: in-distribution windows
of 50/100/200 requests alarm in 2% / 1.5% / 1.5% of 200 windows each (target: at most 5%), and a full change of
topic alarms at the first 100-request window in every stream (target: within 200 requests); a 25% mix within
200 requests, a 10% mix in 40% of streams.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from hone.errors import HoneError
from hone.retrieval.embeddings import Embedder, load_embedder

Status = Literal["ok", "insufficient"]


@dataclass(frozen=True)
class DriftConfig:
    """Options of the drift tests; the defaults are the calibrated ones (see bench/drift_detection.py)."""

    window_size: int = 100
    """Requests per monitoring window: the monitor checks the latest `window_size` requests every
    `window_size` requests. Calibrated: a full change of topic alarms at the first check (100 requests)."""
    min_window: int = 50
    """Fewest window requests scored; a smaller window is reported as insufficient."""
    reference_sample: int = 500
    """Reference rows drawn (without replacement, by seed) for each check; bounds the cost of a check."""
    classifier_quantile: float = 0.95
    """The classifier flags drift when its AUC exceeds this quantile of the AUC with shuffled labels."""
    classifier_permutations: int = 200
    mmd_permutations: int = 300
    mmd_alpha: float = 0.05
    """MMD flags drift when its permutation p-value is below this."""
    rule: Literal["both", "either"] = "both"
    """`both`: drift only when the classifier and MMD agree (1.5-2% false alarms in calibration, each test
    alone 4-7.5%); `either`: when one flags it, more sensitive to a 10% mix but 7-12.5% false alarms at these
    levels (with quantile 0.975 and alpha 0.025: 3.5-5.5%, a 10% mix flagged at a median 100 requests)."""
    most_drifted: int = 5
    """How many window indices `DriftResult.most_drifted` lists."""
    alpha: float = 0.01
    """Significance level of `length_drift` and `rate_drift`: low, so that a monitor alarming on any of the
    three signals stays near the 5% false-alarm budget."""


DEFAULT_CONFIG = DriftConfig()


@dataclass(frozen=True)
class ClassifierCheck:
    """Domain classifier: how well logistic regression tells window embeddings from reference ones."""

    auc: float
    """ROC AUC on the held-out half (window = positive); 0.5 means indistinguishable."""
    threshold: float
    """`classifier_quantile` of the AUC when the reference/window labels are shuffled."""
    p_value: float
    drifted: bool


@dataclass(frozen=True)
class MMDCheck:
    """Maximum mean discrepancy (RBF kernel, median-distance bandwidth) with a permutation p-value."""

    mmd2: float
    """Unbiased estimate of the squared MMD; about 0 when both samples come from one distribution."""
    bandwidth: float
    p_value: float
    drifted: bool


@dataclass(frozen=True)
class DriftResult:
    """Outcome of `embedding_drift` / `prompt_drift` for one window."""

    status: Status
    drifted: bool
    reasons: tuple[str, ...]
    reference_size: int
    window_size: int
    needed: int = 0
    """Requests still needed before the window can be scored (status `insufficient`), else 0."""
    classifier: ClassifierCheck | None = None
    mmd: MMDCheck | None = None
    most_drifted: tuple[int, ...] = ()
    """Window indices the classifier is most confident are not reference traffic, most confident first."""
    truncated: int = 0
    """Window prompts longer than the embedder's window, embedded from their first max_seq_length tokens."""


@dataclass(frozen=True)
class SampleTest:
    """Outcome of `length_drift` or `rate_drift`."""

    status: Status
    drifted: bool
    reason: str
    statistic: float | None = None
    p_value: float | None = None
    needed: int = 0


@dataclass(frozen=True)
class PromptEmbeddings:
    """Embedded prompts with their token counts."""

    vectors: np.ndarray
    lengths: np.ndarray
    """Tokens per prompt, special tokens included, before truncation."""
    max_seq_length: int

    @property
    def truncated(self) -> int:
        """How many prompts were longer than the embedder's window and embedded from their first tokens."""
        return int((self.lengths > self.max_seq_length).sum())


def embed_prompts(prompts: list[str], embedder: Embedder | None = None) -> PromptEmbeddings:
    """Embed `prompts` (bundled all-MiniLM-L6-v2 unless `embedder` is given), counting those truncated."""
    embedder = embedder or load_embedder()
    # verbose=False: counting tokens of an over-long prompt is the point here, not worth a warning.
    token_ids = embedder.tokenizer(prompts, verbose=False)["input_ids"] if prompts else []
    lengths = np.array([len(ids) for ids in token_ids], dtype=np.int64)
    return PromptEmbeddings(embedder.encode(prompts), lengths, max_seq_length=embedder.max_seq_length)


def prompt_drift(reference: PromptEmbeddings, window: PromptEmbeddings, *, seed: int = 0,
                 config: DriftConfig = DEFAULT_CONFIG) -> DriftResult:
    """`embedding_drift` of embedded prompts, reporting how many window prompts were truncated."""
    result = embedding_drift(reference.vectors, window.vectors, seed=seed, config=config)
    return replace(result, truncated=window.truncated)


def embedding_drift(reference: np.ndarray, window: np.ndarray, *, seed: int = 0,
                    config: DriftConfig = DEFAULT_CONFIG) -> DriftResult:
    """Whether `window` embeddings [n, dim] drifted from `reference` embeddings [m, dim].

    Runs the domain classifier and MMD on the window and `config.reference_sample` reference rows, and
    combines them by `config.rule`. Deterministic for a given `seed`.
    """
    if len(reference) < config.min_window:
        raise HoneError(f"the drift reference has {len(reference)} rows, fewer than min_window={config.min_window}",
                        hint="compare against the training dataset's prompts, not a handful of examples")
    if len(window) < config.min_window:
        return DriftResult(status="insufficient", drifted=False, reference_size=len(reference),
                           window_size=len(window), needed=config.min_window - len(window),
                           reasons=(f"{len(window)} requests in the window, {config.min_window} needed",))
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(reference), size=min(len(reference), config.reference_sample), replace=False)
    # float64: sklearn's lbfgs is several times slower on float32 input.
    sample = np.asarray(reference, dtype=np.float64)[np.sort(rows)]
    window = np.asarray(window, dtype=np.float64)
    classifier, window_scores = classifier_check(sample, window, rng, config)
    mmd = mmd_check(sample, window, rng, config)
    flags = (classifier.drifted, mmd.drifted)
    drifted = all(flags) if config.rule == "both" else any(flags)
    return DriftResult(
        status="ok", drifted=drifted, reasons=_reasons(classifier, mmd, config), reference_size=len(reference),
        window_size=len(window), classifier=classifier, mmd=mmd,
        most_drifted=tuple(int(i) for i in np.argsort(-window_scores, kind="stable")[:config.most_drifted]),
    )


def classifier_check(reference: np.ndarray, window: np.ndarray, rng: np.random.Generator,
                     config: DriftConfig = DEFAULT_CONFIG) -> tuple[ClassifierCheck, np.ndarray]:
    """Domain-classifier test, and for every window row the probability that it is window traffic.

    Evidently's default `model` method: a classifier trained on a stratified half of the rows is scored by ROC
    AUC on the other half, and drift is an AUC above the `classifier_quantile` of the AUC of the same scores
    with shuffled labels (Evidently draws random scores instead; the two nulls are the same). A second model
    trained on the other half scores the first half, so every window row gets an out-of-sample probability.
    """
    features = np.vstack([reference, window])
    labels = np.r_[np.zeros(len(reference), dtype=np.int8), np.ones(len(window), dtype=np.int8)]
    halves = StratifiedKFold(n_splits=2, shuffle=True, random_state=int(rng.integers(2**31)))
    (first, tested), (second, _) = halves.split(features, labels)
    scores = np.empty(len(labels))
    scores[tested] = _window_probability(features[first], labels[first], features[tested])
    scores[first] = _window_probability(features[second], labels[second], features[first])
    # Only `tested` enters the AUC: the two halves' scores come from different models, and pooling them
    # makes the AUC vary more than the shuffled-label null (15% false alarms instead of 5% in calibration).
    ranks = stats.rankdata(scores[tested])
    auc = _auc_from_ranks(ranks, labels[tested])
    null = _auc_from_ranks(ranks, _shuffled(labels[tested], config.classifier_permutations, rng))
    threshold = float(np.quantile(null, config.classifier_quantile))
    check = ClassifierCheck(auc=auc, threshold=threshold, p_value=_p_value(auc, null), drifted=auc > threshold)
    return check, scores[len(reference):]


def mmd_check(reference: np.ndarray, window: np.ndarray, rng: np.random.Generator,
              config: DriftConfig = DEFAULT_CONFIG) -> MMDCheck:
    """MMD² between the samples with an RBF kernel of median pairwise distance, p-value by label permutation."""
    pooled = np.vstack([reference, window]).astype(np.float64, copy=False)
    squared = _squared_distances(pooled)
    bandwidth = float(np.sqrt(np.median(squared[np.triu_indices(len(pooled), k=1)])))
    kernel = np.exp(-squared / (2 * bandwidth**2))
    labels = np.r_[np.zeros(len(reference)), np.ones(len(window))]
    observed = float(_mmd2(kernel, labels[None, :])[0])
    null = _mmd2(kernel, _shuffled(labels, config.mmd_permutations, rng))
    p_value = _p_value(observed, null)
    return MMDCheck(mmd2=observed, bandwidth=bandwidth, p_value=p_value, drifted=p_value < config.mmd_alpha)


def length_drift(reference_lengths: np.ndarray | list[int], window_lengths: np.ndarray | list[int], *,
                 config: DriftConfig = DEFAULT_CONFIG) -> SampleTest:
    """Whether prompt lengths (tokens) changed: two-sample Kolmogorov-Smirnov at `config.alpha`."""
    reference_lengths, window_lengths = np.asarray(reference_lengths), np.asarray(window_lengths)
    if len(window_lengths) < config.min_window:
        return _insufficient(len(window_lengths), config)
    test = stats.ks_2samp(reference_lengths, window_lengths)
    drifted = bool(test.pvalue < config.alpha)
    reason = (f"prompt length median {np.median(reference_lengths):g} -> {np.median(window_lengths):g} tokens "
              f"(KS D={test.statistic:.3f}, p={test.pvalue:.2g})")
    return SampleTest(status="ok", drifted=drifted, reason=reason, statistic=float(test.statistic),
                      p_value=float(test.pvalue))


def rate_drift(ref_successes: int, ref_n: int, win_successes: int, win_n: int, *,
               config: DriftConfig = DEFAULT_CONFIG) -> SampleTest:
    """Whether a success rate (e.g. format validity) changed: two-sided Fisher exact test at `config.alpha`.

    `statistic` is the window rate minus the reference rate.
    """
    if not (0 <= ref_successes <= ref_n and 0 <= win_successes <= win_n):
        raise HoneError(f"successes must lie between 0 and n (got {ref_successes}/{ref_n}, {win_successes}/{win_n})")
    if win_n < config.min_window:
        return _insufficient(win_n, config)
    table = [[ref_successes, ref_n - ref_successes], [win_successes, win_n - win_successes]]
    p_value = float(stats.fisher_exact(table).pvalue)
    ref_rate, win_rate = ref_successes / max(ref_n, 1), win_successes / win_n
    reason = f"rate {ref_rate:.1%} -> {win_rate:.1%} (Fisher exact p={p_value:.2g})"
    return SampleTest(status="ok", drifted=p_value < config.alpha, reason=reason, statistic=win_rate - ref_rate,
                      p_value=p_value)


def _insufficient(size: int, config: DriftConfig) -> SampleTest:
    """A SampleTest for a window too small to score."""
    return SampleTest(status="insufficient", drifted=False, needed=config.min_window - size,
                      reason=f"{size} requests in the window, {config.min_window} needed")


def _window_probability(features: np.ndarray, labels: np.ndarray, scored: np.ndarray) -> np.ndarray:
    """Probability that each `scored` row is window traffic, by a logistic regression fitted on `features`."""
    # Balanced weights: the reference sample is usually several times larger than the window.
    model = LogisticRegression(class_weight="balanced", max_iter=1000)
    return model.fit(features, labels).predict_proba(scored)[:, 1]


def _auc_from_ranks(ranks: np.ndarray, labels: np.ndarray) -> np.ndarray | float:
    """ROC AUC (Mann-Whitney U / n1 n0) of rows labelled 1, for one label vector or a matrix of them."""
    positives = labels.sum(axis=-1)
    negatives = labels.shape[-1] - positives
    u = (labels * ranks).sum(axis=-1) - positives * (positives + 1) / 2
    auc = u / (positives * negatives)
    return float(auc) if np.ndim(auc) == 0 else auc


def _shuffled(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` independent random permutations of `labels`, one per row."""
    return rng.permuted(np.tile(labels, (count, 1)), axis=1)


def _squared_distances(points: np.ndarray) -> np.ndarray:
    """Pairwise squared Euclidean distances, clipped at 0 against rounding."""
    norms = (points**2).sum(axis=1)
    return np.maximum(norms[:, None] + norms[None, :] - 2 * points @ points.T, 0.0)


def _mmd2(kernel: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Unbiased MMD² between rows labelled 0 and 1, for each row of `labels` [permutations, n] at once."""
    ones = labels.astype(kernel.dtype)
    n1 = ones.sum(axis=1)
    n0 = labels.shape[1] - n1
    k_ones = ones @ kernel
    within_1 = (k_ones * ones).sum(axis=1)
    across = k_ones.sum(axis=1) - within_1
    within_0 = kernel.sum() - within_1 - 2 * across
    # The RBF kernel's diagonal is 1: drop the i == j terms from the within-sample sums.
    return ((within_0 - n0) / (n0 * (n0 - 1)) + (within_1 - n1) / (n1 * (n1 - 1))
            - 2 * across / (n0 * n1))


def _p_value(observed: float, null: np.ndarray) -> float:
    """Permutation p-value counting the observed statistic as one of the permutations."""
    return float((1 + np.sum(null >= observed)) / (1 + len(null)))


def _reasons(classifier: ClassifierCheck, mmd: MMDCheck, config: DriftConfig) -> tuple[str, ...]:
    """One sentence per test saying what it found."""
    quantile = f"{config.classifier_quantile:.0%} of shuffled-label AUCs"
    relation = ">" if classifier.drifted else "<="
    mmd_relation = "<" if mmd.drifted else ">="
    return (
        f"classifier AUC {classifier.auc:.3f} {relation} {classifier.threshold:.3f} ({quantile})",
        f"MMD p-value {mmd.p_value:.3g} {mmd_relation} {config.mmd_alpha:g} (MMD² {mmd.mmd2:.4f})",
    )
