"""Turn tokenized examples into padded batches, grouped by length so little compute goes to padding."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from hone.data.render import RenderedExample


@dataclass
class Batch:
    """A right-padded micro-batch; `trained` marks the tokens the loss is computed on."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    trained: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    @property
    def num_trained(self) -> int:
        """Target tokens: trained positions that have a token before them to predict from."""
        return int(self.trained[:, 1:].sum())


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


def collate(examples: list[RenderedExample], pad_id: int) -> Batch:
    """Right-pad examples to the longest one in the batch."""
    width = max(len(example) for example in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    trained = torch.zeros((len(examples), width), dtype=torch.bool)
    for row, example in enumerate(examples):
        n = len(example)
        ids[row, :n] = torch.tensor(example.input_ids)
        mask[row, :n] = 1
        trained[row, :n] = torch.tensor(example.trained)
    return Batch(input_ids=ids, attention_mask=mask, trained=trained)
