"""hone's own training loop: plain PyTorch, readable top to bottom.

forward (body only) -> loss on trained tokens -> backward -> clip -> step -> log; with gradient
accumulation, warmup + cosine/linear schedule, periodic eval loss, early stopping and checkpoints
that resume exactly (optimizer, scheduler, RNG and position in the data).
"""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from tqdm import tqdm

from hone.models import frozen_dtype
from hone.train.batching import collate, epoch_batches
from hone.train.checkpoint import Progress, latest_checkpoint, load_checkpoint, save_checkpoint
from hone.train.config import TrainConfig
from hone.train.data import TrainingData
from hone.train.distributed import Distributed
from hone.train.loss import trained_token_loss
from hone.train.packing import collate_packed, pack_examples, packed_target_token_nll
from hone.train.tracking import NullTracker


def lr_lambda(total_steps: int, warmup_steps: int, kind: str):
    """Multiplier on the peak learning rate at each optimizer step."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if kind == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def compute_dtype(device: str, precision: str) -> torch.dtype | None:
    """The autocast dtype of a run: bf16 or fp16 where its precision resolves to one on `device`; None: float32."""
    dtype = frozen_dtype(device, precision)
    return dtype if dtype in (torch.bfloat16, torch.float16) else None


def total_optimizer_steps(config: TrainConfig, num_examples: int) -> tuple[int, int]:
    """(optimizer steps in the run, micro-batches per epoch)."""
    per_epoch = math.ceil(num_examples / config.training.batch_size)
    steps = math.ceil(config.training.epochs * per_epoch / config.training.grad_accum)
    if config.training.max_steps:
        steps = min(steps, config.training.max_steps) if config.training.epochs else config.training.max_steps
    return max(1, steps), per_epoch


@torch.no_grad()
def eval_loss(base_model, examples, batch_size: int, pad_id: int, dist: Distributed | None = None) -> float:
    """Mean cross-entropy per trained token over the eval examples (each batch split across `dist`'s ranks)."""
    dist = dist or Distributed()
    was_training = base_model.training
    base_model.eval()
    losses, count = [], 0
    lengths = [len(e) for e in examples]
    for indices in epoch_batches(lengths, batch_size, seed=0, epoch=0):
        mine, weight = dist.shard(indices)
        if mine:
            loss, n = trained_token_loss(base_model, dist.to_device(collate([examples[i] for i in mine], pad_id)))
            losses.append(loss.float() * weight)
            count += weight * n
    total = float(torch.stack(losses).sum()) if losses else 0.0  # the one read of the device, after the last batch
    total, count = dist.all_sum(total, count)
    base_model.train(was_training)
    return total / max(1, count)


@contextmanager
def stop_requests():
    """Turn Ctrl-C / SIGTERM into a flag checked between steps, so a checkpoint is written first."""
    requested = {"stop": False}

    def handler(signum, frame):
        requested["stop"] = True

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class Trainer:
    """Runs one training run into `run_dir`; `fit()` starts or resumes it."""

    def __init__(self, config: TrainConfig, peft_model, data: TrainingData, run_dir: Path, pad_id: int,
                 show_progress: bool = True, tracker: NullTracker | None = None,
                 on_eval: Callable[[int, float], bool] | None = None):
        self.config, self.model, self.data, self.run_dir = config, peft_model, data, run_dir
        self.on_eval = on_eval  # called with (step, eval loss) after each eval; True stops the run as pruned
        self.pruned = False
        self.tracker = tracker or NullTracker()
        # The transformers model under the adapter (for method full, the trained model itself).
        self.base = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model
        self.weights_folder = "model" if config.method == "full" else "adapter"
        self.pad_id = pad_id
        self.show_progress = show_progress
        self.compute_dtype = compute_dtype(str(self.base.device), config.training.precision)
        if (self.compute_dtype is not None and config.method in {"lora", "qlora", "dpo"}
                and config.training.autocast_adapter_inputs):
            self._autocast_adapter_inputs()
        # fp16's narrow range underflows small gradients: the loss is scaled up before backward, down before the
        # step (bf16 has float32's range and needs none)
        self.scaler = (torch.amp.GradScaler(self.base.device.type) if self.compute_dtype == torch.float16
                       else None)
        # This process's share of a multi-process run (a world of one: all).
        self.dist = Distributed.from_env(fsdp=config.training.distributed == "fsdp", device=config.training.device)
        self.lengths = [len(e) for e in data.train]
        t = config.training
        # The units batches are drawn from: examples, or rows of packed examples.
        self.rows = pack_examples(self.lengths, config.data.max_length) if t.packing else None
        self.unit_lengths = [sum(self.lengths[i] for i in row) for row in self.rows] if t.packing else self.lengths
        targets = [self._targets_of(e) for e in data.train]
        self.unit_targets = [sum(targets[i] for i in row) for row in self.rows] if t.packing else targets
        self.total_steps, self.batches_per_epoch = total_optimizer_steps(config, len(self.unit_lengths))
        self.dist.check_batch_size(t.batch_size)
        params = [p for p in peft_model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, fused=t.fused_optimizer)
        warmup = int(t.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(self.total_steps, warmup, t.scheduler))
        self.progress = Progress()
        self.metrics_path = run_dir / "metrics.jsonl"
        self.checkpoints = run_dir / "checkpoints"

    def resume(self) -> bool:
        """Load the newest checkpoint of this run, if there is one."""
        found = latest_checkpoint(self.checkpoints)
        if found is None:
            return False
        self.progress = load_checkpoint(found, self.model, self.optimizer, self.scheduler, self.scaler)
        self._truncate_metrics(self.progress.global_step)
        return True

    def _truncate_metrics(self, step: int) -> None:
        """Drop metric lines logged after the checkpoint, so a resumed run's log has no repeats."""
        if self.dist.is_main and self.metrics_path.is_file():
            kept = [line for line in self.metrics_path.read_text().splitlines()
                    if line and json.loads(line)["step"] <= step]
            self.metrics_path.write_text("".join(line + "\n" for line in kept))

    def _micro_batches(self):
        """Yield (epoch, index in epoch, batch indices) from the current position onwards, forever."""
        epoch, start = self.progress.epoch, self.progress.batch_in_epoch
        while True:
            batches = epoch_batches(self.unit_lengths, self.config.training.batch_size, self.config.training.seed,
                                    epoch, self.config.training.group_by_length)
            for index in range(start, len(batches)):
                yield epoch, index, batches[index]
            epoch, start = epoch + 1, 0

    def _log(self, record: dict) -> None:
        if not self.dist.is_main:
            return
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        self.tracker.log_step({k: v for k, v in record.items() if k != "step"}, record["step"])

    def _optimizer_step(self, group) -> tuple[torch.Tensor, int]:
        """One optimizer step over a group of micro-batches; returns (this rank's share of the mean loss per
        target token, left on the device: `_train_loss` reads it when logged; the group's tokens)."""
        shares = [self.dist.shard(indices) for _, _, indices in group]  # this rank's part of each micro-batch
        batches = [(self.dist.to_device(self._collate(units)), weight) for units, weight in shares if units]
        # The whole group's counts (every rank's share), from the host: no step waits on a device or a collective.
        units = [unit for _, _, indices in group for unit in indices]
        targets = sum(self.unit_targets[unit] for unit in units)
        tokens = sum(self.unit_lengths[unit] for unit in units)
        losses = []
        for batch, weight in batches:
            with self._autocast():
                loss = self._loss(batch) * weight  # weight 0: a stand-in that keeps FSDP ranks in step
            self._scaled(loss / max(1, targets)).backward()  # every target token weighs the same across the group
            losses.append(loss.detach().float())
        self.dist.sum_gradients(self.model)
        loss_sum = torch.stack(losses).sum() if losses else torch.zeros(())
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clipping and the step see the true gradients
        if self.config.training.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.requires_grad], self.config.training.max_grad_norm)
        self._step_optimizer()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum / max(1, targets), tokens

    def _train_loss(self, loss: torch.Tensor) -> float:
        """The step's mean loss per target token over all ranks: the one place a step's loss leaves the device."""
        return self.dist.all_sum(float(loss))[0]

    def _targets_of(self, example) -> int:
        """Target tokens of one training example: trained tokens with a token of the example before them."""
        return sum(example.trained[1:])

    def _collate(self, units: list[int]):
        """The micro-batch of these units: padded examples, or packed rows."""
        if self.rows is None:
            return collate([self.data.train[i] for i in units], self.pad_id)
        return collate_packed([[self.data.train[i] for i in self.rows[u]] for u in units])

    def _loss(self, batch) -> torch.Tensor:
        """Summed cross-entropy over the micro-batch's target tokens."""
        chunked = self.config.training.chunked_loss
        if self.rows is None:
            return trained_token_loss(self.base, batch, chunked=chunked)[0]
        return packed_target_token_nll(self.base, batch, chunked=chunked,
                                       matmul_attention=self.config.training.matmul_attention)[0].sum()

    def _autocast(self):
        """bf16 (or fp16) compute where the run's precision is, over float32 trained weights (the whole model for
        method full, the adapter otherwise: the frozen base already holds the half-precision weights)."""
        if self.compute_dtype is not None:
            return torch.autocast(self.base.device.type, dtype=self.compute_dtype)
        return nullcontext()

    def _scaled(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss to call backward on: scaled up under fp16."""
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def _step_optimizer(self) -> None:
        """The optimizer step; under fp16 skipped when a gradient overflowed (the scale is then lowered)."""
        if self.scaler is None:
            self.optimizer.step()
            return
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def _autocast_adapter_inputs(self) -> None:
        """Let autocast cast plain LoRA layers' inputs: PEFT would first turn each bf16 input into float32 for
        the float32 adapter, only for autocast to turn it back (DoRA keeps PEFT's casts for its weight norm)."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in self.model.modules():
            if isinstance(module, BaseTunerLayer):
                module.cast_input_dtype_enabled = False

    def step_metrics(self) -> dict:
        """Extra figures logged with each optimizer step (DPO adds its rewards)."""
        return {}

    def eval_metrics(self) -> dict:
        """Eval figures; `eval_loss` decides the best checkpoint and early stopping."""
        with self._autocast():
            return {"eval_loss": eval_loss(self.base, self.data.eval, self.config.training.batch_size, self.pad_id,
                                           self.dist)}

    def save_weights(self) -> None:
        """The adapter (or, for method full, the whole model) into RUN_DIR/adapter (or RUN_DIR/model)."""
        if self.dist.is_main:
            self.model.save_pretrained(self.run_dir / self.weights_folder)

    def _servable_writer(self) -> Callable[[Path], None] | None:
        """Adapters are small, so each checkpoint also holds one that serves as it is (`...:ckpt-step-N`)."""
        if self.weights_folder != "adapter":
            return None
        return lambda folder: self.model.save_pretrained(folder / "adapter")

    def _eval_due(self, last: bool) -> bool:
        """Whether the step just taken runs an eval: every eval_every steps and at the end, given an eval set."""
        t = self.config.training
        return bool(self.data.eval and (last or (t.eval_every and self.progress.global_step % t.eval_every == 0)))

    def _maybe_eval(self, record: dict, last: bool) -> bool:
        """Eval loss when due; returns True when early stopping or the on_eval hook says to stop."""
        t = self.config.training
        if not self._eval_due(last):
            return False
        metrics = self.eval_metrics()
        loss = metrics["eval_loss"]
        record.update({name: round(value, 6) for name, value in metrics.items()})
        p = self.progress
        improved = p.best_eval_loss is None or loss < p.best_eval_loss - 1e-4
        if improved:
            p.best_eval_loss, p.best_step, p.evals_without_improvement = loss, p.global_step, 0
            self.save_weights()  # the weights kept are the best ones
        else:
            p.evals_without_improvement += 1
        # Stopping at the last step would cut nothing short, so the run counts as finished, not pruned.
        if self.on_eval is not None and self.on_eval(p.global_step, loss) and not last:
            self.pruned = True
            return True
        return bool(not improved and t.early_stopping_patience
                    and p.evals_without_improvement >= t.early_stopping_patience)

    def fit(self) -> dict:
        """Train until the step budget, early stopping or a stop request; returns the final figures."""
        t, p = self.config.training, self.progress
        self.model.train()
        stream = self._micro_batches()
        bar = tqdm(total=self.total_steps, initial=p.global_step, desc="train", unit="step",
                   disable=not self.show_progress, dynamic_ncols=True)
        loss, last_loss, stopped_early, interrupted = None, None, False, False
        with stop_requests() as stop:
            while p.global_step < self.total_steps:
                group = [next(stream) for _ in range(t.grad_accum)]
                started = time.perf_counter()
                loss, tokens = self._optimizer_step(group)
                p.global_step += 1
                last = p.global_step == self.total_steps
                # The loss is read (waiting for the device) only on the steps that log it, inside the timing.
                logged = last or p.global_step % t.log_every == 0 or self._eval_due(last)
                last_loss = self._train_loss(loss) if logged else None
                p.train_seconds += time.perf_counter() - started
                p.tokens += tokens
                epoch_before = p.epoch
                p.epoch, p.batch_in_epoch = group[-1][0], group[-1][1] + 1
                if p.batch_in_epoch >= self.batches_per_epoch:
                    p.epoch, p.batch_in_epoch = p.epoch + 1, 0
                if logged:
                    record = {"step": p.global_step,
                              "epoch": round(p.epoch + p.batch_in_epoch / self.batches_per_epoch, 4),
                              "train_loss": round(last_loss, 6), "lr": self.scheduler.get_last_lr()[0],
                              "tokens": p.tokens, "tokens_per_s": round(p.tokens / max(p.train_seconds, 1e-9), 1),
                              "total_steps": self.total_steps, **self.step_metrics()}
                    stopped_early = self._maybe_eval(record, last)
                    self._log(record)
                    bar.set_postfix(loss=f"{last_loss:.4f}", tok_s=f"{record['tokens_per_s']:.0f}",
                                    epoch=f"{record['epoch']:.2f}")
                bar.update(1)
                stop["stop"] = self.dist.any(stop["stop"])  # every rank stops after the same step
                checkpoint_due = (t.save_every and p.global_step % t.save_every == 0) or p.epoch > epoch_before
                if self.dist.is_main and (checkpoint_due or stop["stop"]):
                    save_checkpoint(self.checkpoints, self.model, self.optimizer, self.scheduler, p,
                                    keep=t.save_total_limit, servable=self._servable_writer(), scaler=self.scaler)
                if stopped_early or stop["stop"]:
                    interrupted = stop["stop"] and not stopped_early
                    break
        bar.close()
        if loss is not None and last_loss is None:  # stopped on a step that was not logged
            last_loss = self._train_loss(loss)
        if not self.data.eval and not interrupted:
            self.save_weights()
        return {"final_train_loss": last_loss, "stopped_early": stopped_early and not self.pruned,
                "pruned": self.pruned, "interrupted": interrupted, "steps": p.global_step,
                "total_steps": self.total_steps}
