"""`hone train --dry-run`: show what would be trained and how long an epoch would take, without training."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from hone.models import frozen_dtype, load_tokenizer
from hone.train.batching import epoch_batches
from hone.train.config import TrainConfig
from hone.train.data import load_training_data
from hone.train.distributed import Distributed
from hone.train.loop import total_optimizer_steps
from hone.train.memory import memory_plan
from hone.train.packing import pack_examples, packing_efficiency


def marked_segments(tokenizer, input_ids: list[int], trained: list[bool]) -> list[tuple[str, bool]]:
    """The rendered example split into (text, trained?) runs, for display."""
    segments: list[tuple[str, bool]] = []
    start = 0
    for index in range(1, len(input_ids) + 1):
        if index == len(input_ids) or trained[index] != trained[start]:
            segments.append((tokenizer.decode(input_ids[start:index]), trained[start]))
            start = index
    return segments


def _wait_for(device: torch.device) -> None:
    """A GPU runs queued work asynchronously: wait for it before reading the clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_one_step(config: TrainConfig, data, pad_id: int) -> float:
    """Tokens/s of one forward+backward on the longest micro-batch of the first epoch, in the run's own loop, on
    the device that will train (training.device)."""
    from hone.train.run import build_model, make_trainer

    dist = Distributed.from_env(device=config.training.device)
    device = str(dist.device)
    model = dist.prepare_model(build_model(config, frozen_dtype(device, config.training.precision), device), config)
    with tempfile.TemporaryDirectory() as folder:
        trainer = make_trainer(config, model, data, Path(folder), pad_id, show_progress=False)
        lengths = trainer.unit_lengths
        batches = epoch_batches(lengths, config.training.batch_size, config.training.seed, 0,
                                config.training.group_by_length)
        batch = dist.to_device(trainer._collate(max(batches, key=lambda b: sum(lengths[i] for i in b))))
        for _ in range(2):  # a warm-up pass, then the measured one
            _wait_for(dist.device)
            started = time.perf_counter()
            with trainer._autocast():
                loss = trainer._loss(batch)
            trainer._scaled(loss / max(batch.num_trained, 1)).backward()
            _wait_for(dist.device)
        seconds = time.perf_counter() - started
    del model, trainer
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return batch.num_tokens / seconds


def dry_run(config: TrainConfig, measure: bool = True) -> dict:
    """Token counts, one example with its trained tokens, the memory estimate and the time per epoch."""
    tokenizer = load_tokenizer(config.base_model)
    data = load_training_data(config, tokenizer)
    example = getattr(data.train[0], "chosen", data.train[0])  # for DPO, the pair's preferred sequence
    lengths = [len(e) for e in data.train]
    rows = pack_examples(lengths, config.data.max_length) if config.training.packing else None
    steps, per_epoch = total_optimizer_steps(config, len(rows) if rows else len(lengths))
    report = {
        "examples": {"train": len(data.train), "eval": len(data.eval), "skipped": data.skipped},
        "tokens": {
            "train": data.train_tokens,
            "trained": sum(e.num_trained for e in data.train),
            "mean_length": round(data.train_tokens / len(data.train), 1),
            "max_length": max(len(e) for e in data.train),
        },
        "optimizer_steps": steps,
        "micro_batches_per_epoch": per_epoch,
        "example": {"segments": marked_segments(tokenizer, example.input_ids, example.trained),
                    "tokens": len(example), "trained_tokens": example.num_trained},
        "dataset_fingerprint": data.fingerprint,
    }
    if rows:
        report["packing"] = {"rows": len(rows),
                             "efficiency": round(packing_efficiency(lengths, rows, config.data.max_length), 4)}
    longest_row = max(sum(lengths[i] for i in row) for row in rows) if rows else report["tokens"]["max_length"]
    dist = Distributed.from_env(device=config.training.device)
    report["memory"] = memory_plan(config, longest_row, str(dist.device), dist.world_size)
    if measure:
        tokens_per_s = time_one_step(config, data, tokenizer.pad_token_id)
        report["estimate"] = {"tokens_per_s": round(tokens_per_s, 1),
                              "seconds_per_epoch": round(data.train_tokens / tokens_per_s, 1)}
    return report
