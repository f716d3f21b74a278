"""Sample packing: several short examples share one row, and no token ever sees another example.

Each row holds whole examples back to back. Three things keep them apart:
- the attention mask is block-diagonal causal (a token attends only to earlier tokens of its own example),
- position ids restart at 0 for each example, so RoPE sees the same positions as an unpacked run,
- the first token of every example is not a target, so the loss never trains "end of A -> start of B".

Mask format: a 4D boolean tensor [batch, 1, seq, seq], True where a query may attend to a key. Transformers
5.x passes any 4D mask through `create_causal_mask` untouched; SDPA takes a boolean mask as it is (for any
model dtype, at a quarter of the memory of an fp32 one), while eager attention adds the mask to the scores,
so `packed_hidden_states` turns it into an additive mask in the model's dtype for eager. Padding forms one
more block of its own, so no query row is fully masked (which would put NaNs into the forward or backward).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch

from hone.data.render import RenderedExample
from hone.errors import HoneError
from hone.models.scoring import grouped_target_nll

PADDING = -1  # example index of padding tokens


def pack_examples(lengths: list[int], max_length: int) -> list[list[int]]:
    """Rows of example indices, each row's total length at most `max_length`; deterministic.

    Best-fit decreasing: longest examples first, each into the fullest row it still fits in. Every index
    appears exactly once; an example longer than `max_length` gets a row of its own.
    """
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, row number), sorted, for rows that still have space
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        slot = bisect.bisect_left(free, (lengths[index], -1))
        if slot < len(free):
            space, row = free.pop(slot)
        else:
            space, row = max_length, len(rows)
            rows.append([])
        rows[row].append(index)
        if space - lengths[index] > 0:
            bisect.insort(free, (space - lengths[index], row))
    return rows


def packing_efficiency(lengths: list[int], rows: list[list[int]], max_length: int) -> float:
    """Share of the rows' token slots (max_length each, or an oversized example's length) that hold tokens."""
    used = [sum(lengths[i] for i in row) for row in rows]
    slots = sum(max(max_length, n) for n in used)
    return sum(used) / slots if slots else 1.0


@dataclass
class PackedBatch:
    """Rows of packed examples, right-padded; usable wherever a `Batch` is read (same field names).

    `attention_mask` is [batch, 1, seq, seq] boolean block-diagonal causal; `position_ids` restart at 0 per
    example; `example_index` numbers the examples across the batch in row order (PADDING for padding).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    trained: torch.Tensor
    position_ids: torch.Tensor
    example_index: torch.Tensor

    @property
    def num_examples(self) -> int:
        return int(self.example_index.max()) + 1

    @property
    def num_tokens(self) -> int:
        return int((self.example_index != PADDING).sum())

    @property
    def num_trained(self) -> int:
        """Target tokens: trained positions predicted from a token of the same example."""
        return int(self.trained[:, 1:].sum())


def collate_packed(examples_per_row: list[list[RenderedExample]], pad_id: int) -> PackedBatch:
    """Concatenate each row's examples, right-pad to the longest row, and build the block-diagonal mask."""
    width = max(sum(len(example) for example in row) for row in examples_per_row)
    shape = (len(examples_per_row), width)
    ids = torch.full(shape, pad_id, dtype=torch.long)
    trained = torch.zeros(shape, dtype=torch.bool)
    positions = torch.zeros(shape, dtype=torch.long)
    example_index = torch.full(shape, PADDING, dtype=torch.long)
    number = 0
    for row, examples in enumerate(examples_per_row):
        start = 0
        for example in examples:
            end = start + len(example)
            ids[row, start:end] = torch.tensor(example.input_ids)
            trained[row, start + 1:end] = torch.tensor(example.trained[1:], dtype=torch.bool)
            positions[row, start:end] = torch.arange(len(example))
            example_index[row, start:end] = number
            start, number = end, number + 1
        positions[row, start:] = torch.arange(width - start)
    return PackedBatch(input_ids=ids, attention_mask=block_causal_mask(example_index), trained=trained,
                       position_ids=positions, example_index=example_index)


def block_causal_mask(example_index: torch.Tensor) -> torch.Tensor:
    """[batch, 1, seq, seq] boolean: query i may attend to key j when j <= i and both are in the same example."""
    width = example_index.shape[1]
    same = example_index[:, :, None] == example_index[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool, device=example_index.device).tril()
    return (same & causal).unsqueeze(1)


def _attention_mask_for(model, mask: torch.Tensor) -> torch.Tensor:
    implementation = model.config._attn_implementation
    if implementation == "sdpa":
        return mask
    if implementation == "eager":
        dtype = model.dtype
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    raise HoneError(f"sample packing needs sdpa or eager attention, but the model uses {implementation!r}",
                    hint="load the model with attn_implementation='sdpa', or turn packing off")


def packed_hidden_states(model, batch: PackedBatch) -> torch.Tensor:
    """The decoder's last hidden states for a packed batch; every token sees only its own example."""
    mask = _attention_mask_for(model, batch.attention_mask)
    return model.get_decoder()(input_ids=batch.input_ids, attention_mask=mask,
                               position_ids=batch.position_ids).last_hidden_state


def packed_target_token_nll(model, batch: PackedBatch, chunk_size: int = 2048,
                            chunked: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example of the batch (in `example_index` order): summed cross-entropy of its targets, and their count.

    Same as `hone.models.scoring.target_token_nll`, but with positions restarting per example and the
    block-diagonal mask; the lm_head runs only on positions that predict a target, in chunks.
    """
    return grouped_target_nll(model, packed_hidden_states(model, batch), batch, batch.example_index,
                              batch.num_examples, chunk_size, chunked)
