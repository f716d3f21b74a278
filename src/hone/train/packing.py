"""Sample packing: several short examples share one sequence, and no token ever sees another example.

A micro-batch's examples go back to back into one sequence with no padding at all. Three things keep them
apart:
- attention runs per example: `packed_attention` (registered with transformers as "hone_packed") cuts the
  sequence at the example boundaries (`cu_seq_lens`, as flash-attention's varlen kernels take them) and
  runs causal SDPA on each piece, so its cost follows each example's own length, not the sequence's;
- position ids restart at 0 for each example, so RoPE sees the same positions as an unpacked run;
- the first token of every example is not a target, so the loss never trains "end of A -> start of B".

Batches are still drawn as rows of at most `data.max_length` tokens (`pack_examples`), so a step holds
the same number of tokens whatever the data's lengths.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass

import torch

from hone.data.render import RenderedExample
from hone.models.scoring import grouped_target_nll, target_layout

ATTENTION = "hone_packed"


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
    """Examples back to back in one sequence; usable wherever a `Batch` is read (same field names).

    `position_ids` restart at 0 per example; `example_index` numbers the examples in order; `cu_seq_lens`
    holds where each example starts, and the sequence's length last; `example_lengths` the same on the host,
    so attention splits the sequence without reading the device. The target fields are `Batch`'s, per example.
    """

    input_ids: torch.Tensor
    trained: torch.Tensor
    position_ids: torch.Tensor
    example_index: torch.Tensor
    cu_seq_lens: torch.Tensor
    example_lengths: list[int]
    target_positions: torch.Tensor
    target_groups: torch.Tensor
    target_counts: list[int]

    @property
    def num_examples(self) -> int:
        return len(self.example_lengths)

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[1]

    @property
    def num_trained(self) -> int:
        """Target tokens: trained positions predicted from a token of the same example."""
        return sum(self.target_counts)


def collate_packed(examples_per_row: list[list[RenderedExample]]) -> PackedBatch:
    """Every example of the rows, in row order, concatenated into one sequence of length 1 x tokens."""
    examples = [example for row in examples_per_row for example in row]
    lengths = [len(example) for example in examples]
    starts = [0, *itertools.accumulate(lengths)]
    trained = torch.tensor([[i > 0 and flag for e in examples for i, flag in enumerate(e.trained)]])
    positions, groups, counts = target_layout(examples, starts[:-1])
    return PackedBatch(
        input_ids=torch.tensor([[token for example in examples for token in example.input_ids]]),
        trained=trained,
        position_ids=torch.cat([torch.arange(n) for n in lengths])[None],
        example_index=torch.repeat_interleave(torch.arange(len(examples)), torch.tensor(lengths))[None],
        cu_seq_lens=torch.tensor(starts, dtype=torch.int32), example_lengths=lengths,
        target_positions=positions, target_groups=groups, target_counts=counts)


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                     cu_seq_lens_q: torch.Tensor | None = None, example_lengths: list[int] | None = None,
                     **kwargs):
    """Causal SDPA on each example of a packed sequence; unpacked calls (evals) are plain SDPA. The examples'
    lengths come from the host (`example_lengths`, passed down by `packed_hidden_states`) where given."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    dtype = query.dtype
    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    lengths = example_lengths or (cu_seq_lens_q[1:] - cu_seq_lens_q[:-1]).tolist()
    # In float32: on a CPU, SDPA's bf16 kernels take twice as long as its fp32 ones on example-sized pieces.
    # `split`, not slicing: the backward of a slice fills a zero tensor the size of the whole sequence.
    pieces = zip(*((t.float() if t.device.type == "cpu" else t).split(lengths, dim=2) for t in (query, key, value)),
                 strict=True)
    with torch.autocast(query.device.type, enabled=False):  # autocast would put SDPA back into bf16
        outputs = [sdpa_attention_forward(module, q, k, v, None, dropout=dropout, scaling=scaling, is_causal=True)[0]
                   for q, k, v in pieces]
    return torch.cat(outputs, dim=1).to(dtype), None


def use_packed_attention(model) -> None:
    """Register `packed_attention` with transformers (once) and switch `model` to it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTENTION, packed_attention)
        AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # what the unpacked calls get
    if model.config._attn_implementation != ATTENTION:
        model.set_attn_implementation(ATTENTION)


def packed_hidden_states(model, batch: PackedBatch) -> torch.Tensor:
    """The decoder's last hidden states for a packed batch; every token sees only its own example."""
    use_packed_attention(model)
    longest = max(batch.example_lengths)
    return model.get_decoder()(input_ids=batch.input_ids, position_ids=batch.position_ids,
                               cu_seq_lens_q=batch.cu_seq_lens, cu_seq_lens_k=batch.cu_seq_lens,
                               max_length_q=longest, max_length_k=longest,
                               example_lengths=batch.example_lengths).last_hidden_state


def packed_target_token_nll(model, batch: PackedBatch, chunk_size: int | None = None,
                            chunked: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example of the batch (in `example_index` order): summed cross-entropy of its targets, and their count.

    Same as `hone.models.scoring.target_token_nll`, but with positions restarting per example and attention
    within each example; the lm_head runs only on positions that predict a target, in chunks.
    """
    return grouped_target_nll(model, packed_hidden_states(model, batch), batch, chunk_size, chunked)
