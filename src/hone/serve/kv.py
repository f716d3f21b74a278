"""The batched KV cache of the sequences being decoded: left-padded rows that join and leave between steps.

Every row is left-padded to the batch's width; the attention mask marks the padding, and each row carries
its own position ids, so padding never changes what a row computes.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache


def _layer_tensors(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _pad_left(tensor: torch.Tensor, columns: int, dim: int) -> torch.Tensor:
    """`tensor` with `columns` zeros prepended along `dim` (masked out, so their value never matters)."""
    if columns == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = columns
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class BatchCache:
    """KV tensors `[rows, heads, width, head_dim]` per layer plus the `[rows, width]` attention mask."""

    def __init__(self, cache: DynamicCache, mask: torch.Tensor):
        self.cache = cache
        self.mask = mask

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    def concat(self, other: BatchCache) -> BatchCache:
        """This batch's rows followed by `other`'s, both left-padded to the wider of the two."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        mine, theirs = width - self.mask.shape[1], width - other.mask.shape[1]
        layers = [
            (torch.cat([_pad_left(k1, mine, 2), _pad_left(k2, theirs, 2)]),
             torch.cat([_pad_left(v1, mine, 2), _pad_left(v2, theirs, 2)]))
            for (k1, v1), (k2, v2) in zip(_layer_tensors(self.cache), _layer_tensors(other.cache), strict=True)
        ]
        mask = torch.cat([_pad_left(self.mask, mine, 1), _pad_left(other.mask, theirs, 1)])
        return BatchCache(DynamicCache(ddp_cache_data=layers), mask)

    def select(self, keep: list[int]) -> BatchCache:
        """Only the rows `keep`, with the padding columns no remaining row needs cut off the left."""
        index = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        first = int(mask.any(dim=0).to(torch.int8).argmax())  # leftmost column some row still attends to
        layers = [(k.index_select(0, index)[:, :, first:], v.index_select(0, index)[:, :, first:])
                  for k, v in _layer_tensors(self.cache)]
        return BatchCache(DynamicCache(ddp_cache_data=layers), mask[:, first:])

    def grow(self) -> torch.Tensor:
        """The mask extended by one attended column for the token about to be fed to every row."""
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.rows, 1))], dim=1)
        return self.mask


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(input_ids, attention_mask, position_ids)` for prompts of different lengths, padded on the left."""
    width = max(len(ids) for ids in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        mask[row, width - len(ids):] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return input_ids.to(device), mask.to(device), positions.to(device)
