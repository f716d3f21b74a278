"""How far a hone LoRA training step is from its floor: the step's own matmuls, replayed alone.

One hone run, configured as `train_throughput.py` configures it (every speed switch on), in this process:
1. the first optimizer step is timed with the page faults it takes (fresh memory is faulted in page by page);
2. after warm-up, one batch is kept and trained on again and again, so every timed step does the same work;
   their median is the step time;
3. one of those steps runs under a recorder that notes every matmul (mm, bmm, addmm, baddbmm) with its shapes
   and dtypes; replaying exactly those matmuls alone, on random data, gives the least time a step can take
   with these matmul kernels however much the rest (norms, activations, attention's softmax, copies, Python,
   the allocator) is sped up.
Prints one JSON line: the step, the matmul floor and the share of the step that is not matmuls.

    python bench/train_step_floor.py [--device cpu|cuda] [--model NAME] [--limit N] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import DEFAULT_TRAIN, MODEL, check_device, finished, hone_settings, limited_copy, run_hone  # noqa: E402

MATMULS = {"aten.mm.default", "aten.bmm.default", "aten.addmm.default", "aten.baddbmm.default"}
WARMUP_STEPS = 3  # before the batch is fixed: the allocator and the kernels' caches settle


class MatmulRecorder(TorchDispatchMode):
    """Notes every matmul that runs (forward and backward) as (op, [(shape, dtype), ...])."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, list[tuple[tuple[int, ...], torch.dtype]]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in MATMULS:
            self.calls.append((str(func), [(tuple(a.shape), a.dtype) for a in args if isinstance(a, torch.Tensor)]))
        return func(*args, **(kwargs or {}))


def replay_seconds(calls: list, device: str, repeats: int = 3) -> float:
    """The least time the recorded matmuls take, run back to back alone (contiguous random operands)."""
    ops = {"aten.mm.default": torch.mm, "aten.bmm.default": torch.bmm, "aten.addmm.default": torch.addmm,
           "aten.baddbmm.default": torch.baddbmm}
    operands: dict[tuple, list[torch.Tensor]] = {}
    work = []
    for name, shapes in calls:
        key = (name, tuple(shapes))
        if key not in operands:
            operands[key] = [torch.randn(shape, dtype=dtype, device=device) for shape, dtype in shapes]
        work.append((ops[name], operands[key]))
    best = float("inf")
    for _ in range(repeats + 1):  # the first round creates the kernels for each shape
        finished(device)
        started = time.perf_counter()
        for op, tensors in work:
            op(*tensors)
        finished(device)
        best = min(best, time.perf_counter() - started)
    return best


def measure(train_file: Path, out: Path, model: str, device: str, steps: int) -> dict:
    from hone.train import loop

    original = loop.Trainer._optimizer_step
    seen: dict = {"steps": 0, "times": [], "faults": []}

    def step(trainer, group):
        seen["steps"] += 1
        if seen["steps"] == WARMUP_STEPS:
            seen["group"] = group
        if seen["steps"] > WARMUP_STEPS:
            group = seen["group"]  # the same work every timed step
        if seen["steps"] == WARMUP_STEPS + 2:
            with MatmulRecorder() as recorder:
                result = original(trainer, group)
            seen["calls"] = recorder.calls
            return result
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        started = time.perf_counter()
        result = original(trainer, group)
        finished(device)
        seconds = time.perf_counter() - started
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        if seen["steps"] == 1:
            seen["first"] = (seconds, faults)
        elif seen["steps"] > WARMUP_STEPS + 2:
            seen["times"].append(seconds)
            seen["faults"].append(faults)
            seen["tokens"] = result[1]
        return result

    loop.Trainer._optimizer_step = step
    try:
        run_hone(train_file, out, "floor", hone_settings({}), model, device, max_steps=WARMUP_STEPS + 2 + steps)
    finally:
        loop.Trainer._optimizer_step = original
    step_s = statistics.median(seen["times"])
    matmul_s = replay_seconds(seen["calls"], device)
    return {"tokens": seen["tokens"], "steps_timed": len(seen["times"]), "step_s": round(step_s, 3),
            "matmuls": len(seen["calls"]), "matmul_s": round(matmul_s, 3),
            "not_matmul_share": round(1 - matmul_s / step_s, 3),
            "tokens_per_s": round(seen["tokens"] / step_s, 1),
            "tokens_per_s_matmuls_only": round(seen["tokens"] / matmul_s, 1),
            "first_step_s": round(seen["first"][0], 3), "first_step_page_faults": seen["first"][1],
            "later_step_page_faults": int(statistics.median(seen["faults"]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, default=DEFAULT_TRAIN)
    parser.add_argument("--limit", type=int, default=400, help="Use only the first N training examples.")
    parser.add_argument("--steps", type=int, default=10, help="Timed steps on the fixed batch.")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model", default=MODEL, help="A hone model name or folder. Default: %(default)s.")
    args = parser.parse_args()
    check_device(args.device)
    with tempfile.TemporaryDirectory(prefix="hone-bench-") as tmp:
        train_file = limited_copy(args.train, args.limit, Path(tmp))
        figures = measure(train_file, Path(tmp) / "out", args.model, args.device, args.steps)
    print(json.dumps({"bench": "train_step_floor", "model": args.model, "device": args.device, **figures}))


if __name__ == "__main__":
    main()
