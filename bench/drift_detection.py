"""Drift detection calibration: false alarms on in-distribution windows, delay to flag a change of topic.

Traffic is templated prompts (tests/data/drift/drift_prompts.py, fixed seeds): the reference (the "training
data") and the in-distribution pool are support tickets drawn with different seeds; the shifts are
legal-contract and medical-billing questions. Every prompt is embedded once with the bundled
all-MiniLM-L6-v2; windows are drawn from the embedded pools.

- False-alarm rate: share of `--windows` in-distribution windows flagged, for each window size.
- Detection delay: a stream whose every request is shifted with probability `share` (1.0, 0.5, 0.25, 0.1) is
  checked in consecutive windows of `--window` requests; the delay is the number of requests seen when the
  first window alarms (median and worst over `--streams` streams; null when none alarms within
  `--stream-length` requests).
- ms per check: wall time of one window check (embedding excluded).

The anchors in the same run are Evidently's default embedding-drift method (`model`) on the same windows,
when `evidently` imports: as EmbeddingsDriftMetric configures it (bootstrap only for a reference under 1000
rows, else AUC > 0.55) and with bootstrap forced on. evidently 0.7 needs pandas < 3, so it is not a hone
dependency: install it apart, e.g. `pip install --target /tmp/ev evidently "pandas<3"` and PYTHONPATH=/tmp/ev.
Prints one JSON line.

    python bench/drift_detection.py [--reference 1000] [--windows 200] [--streams 10] [--blas-threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "data" / "drift"))
from drift_prompts import prompts  # noqa: E402

from hone.monitor.drift import DriftConfig, embed_prompts, embedding_drift  # noqa: E402

SHARES = (1.0, 0.5, 0.25, 0.1)
Detector = Callable[[np.ndarray, np.ndarray, int], bool]


def embedded_pools(args: argparse.Namespace) -> dict[str, np.ndarray]:
    """Embeddings of the reference, the in-distribution pool and the two shifted topics (cached in --cache)."""
    sizes = np.array([args.reference, args.pool, args.shift_pool])
    if args.cache and Path(args.cache).is_file():
        cached = dict(np.load(args.cache))
        if np.array_equal(cached.pop("sizes", None), sizes):  # a cache of other pool sizes is embedded again
            return cached
    texts = {
        "reference": prompts("support", args.reference, seed=0),
        "support": prompts("support", args.pool, seed=1),
        "legal": prompts("legal", args.shift_pool, seed=2),
        "medical_billing": prompts("medical_billing", args.shift_pool, seed=3),
    }
    pools = {name: embed_prompts(batch).vectors for name, batch in texts.items()}
    if args.cache:
        np.savez(args.cache, sizes=sizes, **pools)
    return pools


def false_alarm_rate(detect: Detector, pools: dict[str, np.ndarray], size: int, windows: int) -> float:
    """Share of `windows` random in-distribution windows of `size` that `detect` flags."""
    rng = np.random.default_rng(size)
    alarms = 0
    for i in range(windows):
        window = pools["support"][rng.choice(len(pools["support"]), size, replace=False)]
        alarms += detect(pools["reference"], window, i)
    return alarms / windows


def detection_delays(detect: Detector, pools: dict[str, np.ndarray], topic: str, share: float,
                     args: argparse.Namespace) -> list[int | None]:
    """Requests until the first alarm, per stream, for traffic shifted to `topic` with probability `share`."""
    delays: list[int | None] = []
    for stream in range(args.streams):
        rng = np.random.default_rng([stream, int(share * 100)])
        shifted = rng.random(args.stream_length) < share
        traffic = np.where(
            shifted[:, None],
            pools[topic][rng.integers(len(pools[topic]), size=args.stream_length)],
            pools["support"][rng.integers(len(pools["support"]), size=args.stream_length)],
        )
        delays.append(_first_alarm(detect, pools["reference"], traffic, args.window, stream))
    return delays


def _first_alarm(detect: Detector, reference: np.ndarray, traffic: np.ndarray, window: int,
                 seed: int) -> int | None:
    """Requests seen when the first consecutive window of `traffic` alarms, or None."""
    for end in range(window, len(traffic) + 1, window):
        if detect(reference, traffic[end - window:end], seed):
            return end
    return None


def hone_detector(config: DriftConfig) -> Detector:
    """hone's embedding_drift with `config`."""
    return lambda reference, window, seed: embedding_drift(reference, window, seed=seed, config=config).drifted


def evidently_detector(bootstrap: bool | None = None) -> Detector | None:
    """Evidently's `model` embedding-drift method, or None when evidently does not import.

    `bootstrap=None` configures it as EmbeddingsDriftMetric does by default: the random-classifier AUC
    quantile for a reference under 1000 rows, else the fixed threshold AUC > 0.55.
    """
    try:
        import pandas as pd
        from evidently.legacy.metrics.data_drift.embedding_drift_methods import model
    except ImportError:
        return None

    def detect(reference: np.ndarray, window: np.ndarray, seed: int) -> bool:
        method = model(bootstrap=len(reference) < 1000 if bootstrap is None else bootstrap)
        return bool(method(pd.DataFrame(window), pd.DataFrame(reference))[1])

    return detect


def measure(detect: Detector, pools: dict[str, np.ndarray], args: argparse.Namespace) -> dict:
    """False-alarm rates per window size, detection delays per topic and share, and ms per check."""
    calls = 0

    def counted(reference: np.ndarray, window: np.ndarray, seed: int) -> bool:
        nonlocal calls
        calls += 1
        return detect(reference, window, seed)

    started = time.perf_counter()
    false_alarms = {size: false_alarm_rate(counted, pools, size, args.windows) for size in args.sizes}
    delays = {}
    for topic, shares in (("legal", SHARES), ("medical_billing", (1.0,))):
        for share in shares:
            found = detection_delays(counted, pools, topic, share, args)
            hits = sorted(d for d in found if d is not None)
            delays[f"{topic}@{share:g}"] = {
                "median": hits[len(found) // 2] if len(hits) * 2 > len(found) else None,  # misses count as never
                "worst": max(hits) if len(hits) == len(found) else None,
                "flagged_within_200": sum(d <= 200 for d in hits) / len(found),
            }
    ms_per_check = round(1000 * (time.perf_counter() - started) / calls, 1)
    return {"false_alarm_rate": false_alarms, "detection_delay": delays, "ms_per_check": ms_per_check}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", type=int, default=1000, help="reference (training) prompts")
    parser.add_argument("--pool", type=int, default=3000, help="in-distribution prompts windows are drawn from")
    parser.add_argument("--shift-pool", type=int, default=1000, help="prompts per shifted topic")
    parser.add_argument("--windows", type=int, default=200, help="in-distribution windows per size")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[50, 100, 200])
    parser.add_argument("--window", type=int, default=DriftConfig().window_size,
                        help="window of the streaming detection delay")
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument("--stream-length", type=int, default=600)
    parser.add_argument("--cache", help="npz file caching the embeddings between runs with the same sizes")
    parser.add_argument("--no-evidently", action="store_true")
    parser.add_argument("--blas-threads", type=int, help="limit BLAS threads (default: leave as configured)")
    args = parser.parse_args()
    if args.blas_threads:
        threadpool_limits(args.blas_threads, user_api="blas")
    pools = embedded_pools(args)
    report = {"reference": args.reference, "windows": args.windows, "streams": args.streams,
              "stream_window": args.window, "blas_threads": args.blas_threads,
              "hone": measure(hone_detector(DriftConfig()), pools, args)}
    anchors = {"evidently_default": None, "evidently_bootstrap": True}
    for name, bootstrap in anchors.items():
        anchor = None if args.no_evidently else evidently_detector(bootstrap)
        report[name] = measure(anchor, pools, args) if anchor else "evidently not installed"
    print(json.dumps(report))


if __name__ == "__main__":
    main()
