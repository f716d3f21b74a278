"""Turn tokenized examples into padded batches, grouped by length so little compute goes to padding."""

from __future__ import annotations

import random

from hone.models.scoring import Batch, collate

__all__ = ["Batch", "collate", "epoch_batches"]


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int,
                  group_by_length: bool = False, pool: int = 64) -> list[list[int]]:
    """The batches of one epoch as lists of example indices, deterministic in (seed, epoch).

    Examples are shuffled, then sorted by length within pools of `pool` batches, so batches hold
    examples of similar length while the order across batches stays random.
    """
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        size = batch_size * pool
        order = [i for start in range(0, len(order), size)
                 for i in sorted(order[start:start + size], key=lambda j: -lengths[j])]
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches
