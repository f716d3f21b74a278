"""`hone train --dry-run`: show what would be trained and how long an epoch would take, without training."""

from __future__ import annotations

import time

import torch

from hone.models import frozen_dtype, load_tokenizer
from hone.train.batching import collate, epoch_batches
from hone.train.config import TrainConfig
from hone.train.data import load_training_data
from hone.train.loop import total_optimizer_steps
from hone.train.loss import trained_token_loss
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


def time_one_step(config: TrainConfig, data, pad_id: int) -> float:
    """Seconds for one forward+backward on the longest micro-batch of the first epoch."""
    from hone.train.run import build_lora_model

    model = build_lora_model(config, frozen_dtype("cpu", config.training.precision))
    base = model.get_base_model()
    lengths = [len(e) for e in data.train]
    batches = epoch_batches(lengths, config.training.batch_size, config.training.seed, 0,
                            config.training.group_by_length)
    batch = collate([data.train[i] for i in max(batches, key=lambda b: sum(lengths[i] for i in b))], pad_id)
    loss, n = trained_token_loss(base, batch)  # warm-up pass
    (loss / max(n, 1)).backward()
    started = time.perf_counter()
    loss, n = trained_token_loss(base, batch)
    (loss / max(n, 1)).backward()
    seconds = time.perf_counter() - started
    tokens_per_s = batch.num_tokens / seconds
    del model
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return tokens_per_s


def dry_run(config: TrainConfig, measure: bool = True) -> dict:
    """Token counts, one example with its trained tokens, the memory estimate and the time per epoch."""
    tokenizer = load_tokenizer(config.base_model)
    data = load_training_data(config, tokenizer)
    example = data.train[0]
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
    report["memory"] = memory_plan(config, longest_row)
    if measure:
        tokens_per_s = time_one_step(config, data, tokenizer.pad_token_id)
        report["estimate"] = {"tokens_per_s": round(tokens_per_s, 1),
                              "seconds_per_epoch": round(data.train_tokens / tokens_per_s, 1)}
    return report
