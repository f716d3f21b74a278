"""The training hot path never waits on the device to read a number: counts come from the host at collate time,
and the loss is read only on the steps that log it.

On a GPU every read of a tensor's value (`.item()`, `float(t)`, `bool(t)`, `.tolist()`, a boolean-mask index)
stops the host until the device has caught up. The CPU has no such wait, so the reads themselves are counted:
every `aten._local_scalar_dense` (what `.item()`, `float()`, `int()` and `bool()` call), every data-dependent
shape (boolean-mask indexing, `nonzero`, `masked_select`) and every `.tolist()`.
"""

from __future__ import annotations

import traceback
from collections import Counter

import pytest
import torch
from test_train import make_config
from test_train_methods import dpo_config
from torch.utils._python_dispatch import TorchDispatchMode

from hone.train.config import load_config
from hone.train.loop import Trainer
from hone.train.run import train

READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
         torch.ops.aten.masked_select.default}
# The optimizer keeps its step counters on the host on every device, and transformers reads whether position
# ids hold packed sequences while it builds the mask: neither is hone's read.
NOT_HONES = ("torch/optim/", "transformers/masking_utils.py")


class DeviceReads(TorchDispatchMode):
    """Counts the reads of tensor values made while training, by the optimizer step being taken."""

    def __init__(self, trainer_steps):
        super().__init__()
        self.step_of = trainer_steps
        self.reads: Counter[int] = Counter()

    def record(self) -> None:
        if not any(marker in frame.filename for frame in traceback.extract_stack() for marker in NOT_HONES):
            self.reads[self.step_of()] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        boolean_index = func is torch.ops.aten.index.Tensor and any(
            index is not None and index.dtype == torch.bool for index in args[1])
        if func in READS or boolean_index:
            self.record()
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("method,training", [("lora", {}), ("lora", {"packing": True, "batch_size": 2}),
                                             ("dpo", {})])
def test_training_reads_the_device_only_on_logged_steps(tmp_path, tiny_model_dir, monkeypatch, method, training):
    """Training 12 micro-batches (6 steps of 2) with log_every 3 reads tensor values on steps 3 and 6 only, and
    none of the reads happens while a micro-batch is trained."""
    settings = {"epochs": 4, "max_steps": 6, "grad_accum": 2, "log_every": 3, **training}
    path = dpo_config(tmp_path, tiny_model_dir, **settings) if method == "dpo" else make_config(
        tmp_path, tiny_model_dir, eval_every=None, **settings)
    config = load_config(path)
    config.data.eval = None
    reads: dict[str, DeviceReads] = {}
    in_step = {"now": False}
    fit, optimizer_step, tolist = Trainer.fit, Trainer._optimizer_step, torch.Tensor.tolist

    def counted_fit(self):
        reads["mode"] = DeviceReads(lambda: "micro-batches" if in_step["now"] else self.progress.global_step)
        with reads["mode"]:
            return fit(self)

    def marked_step(self, group):
        in_step["now"] = True
        try:
            return optimizer_step(self, group)
        finally:
            in_step["now"] = False

    def counted_tolist(tensor):
        if "mode" in reads:
            reads["mode"].record()
        return tolist(tensor)

    monkeypatch.setattr(Trainer, "fit", counted_fit)
    monkeypatch.setattr(Trainer, "_optimizer_step", marked_step)
    monkeypatch.setattr(torch.Tensor, "tolist", counted_tolist)
    run_dir = train(config, show_progress=False)
    counted = reads["mode"].reads
    assert counted["micro-batches"] == 0
    assert set(counted) == {3, 6}  # steps 1, 2, 4 and 5 are not logged
    logged = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    assert len(logged) == 2
