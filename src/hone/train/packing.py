"""Sample packing: several short examples share one sequence, and no token ever sees another example.

A micro-batch's examples go back to back into one sequence with no padding at all. Three things keep them
apart:
- attention runs per example: `packed_attention` (registered with transformers as "hone_packed") cuts the
  sequence at the example boundaries and runs causal attention on examples of similar length together
  (`attention_groups`), so its cost follows each example's own length, not the sequence's;
- position ids restart at 0 for each example, so RoPE sees the same positions as an unpacked run;
- the first token of every example is not a target, so the loss never trains "end of A -> start of B".

Batches are still drawn as rows of at most `data.max_length` tokens (`pack_examples`), so a step holds
the same number of tokens whatever the data's lengths.
"""

from __future__ import annotations

import bisect
import itertools
from contextvars import ContextVar
from dataclasses import dataclass

import torch

from hone.data.render import RenderedExample
from hone.models.scoring import grouped_target_nll, target_layout

ATTENTION = "hone_packed"
# The running packed batch's attention groups: set around the decoder call rather than passed through it, so a
# compiled decoder layer is not specialised (and recompiled) on how a batch's examples are laid out.
_ATTENTION_GROUPS: ContextVar[AttentionGroups | None] = ContextVar("attention_groups", default=None)
# Whether a CPU attends short examples through `matmul_attention` (training.matmul_attention), likewise.
_MATMUL_ATTENTION: ContextVar[bool] = ContextVar("matmul_attention", default=True)


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
class AttentionGroups:
    """How attention batches a packed sequence's examples: examples of similar length form a group, each example
    padded at its end to its group's longest, so one batched call covers a group instead of one call per example.

    `gather` picks each group's padded slots from the packed sequence, group after group (a padding slot takes
    its example's first token: causal attention never shows it to a real token, and its output is dropped);
    `scatter` finds each packed token's output among them. `shapes` holds each group's (examples, length).
    """

    gather: torch.Tensor
    scatter: torch.Tensor
    shapes: list[tuple[int, int]]


# A group may cost this much more attention than its examples alone (padding), for the one call it saves.
GROUP_SLACK = 1.3


def attention_groups(lengths: list[int]) -> AttentionGroups:
    """Greedy, longest first: an example joins the current group while padding it and the group to the group's
    longest costs at most GROUP_SLACK times their attention unpadded (which grows with length squared)."""
    starts = [0, *itertools.accumulate(lengths)]
    groups: list[list[int]] = []
    for example in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        group = groups[-1] if groups else None
        if group and (len(group) + 1) * lengths[group[0]] ** 2 <= GROUP_SLACK * sum(
                lengths[i] ** 2 for i in (*group, example)):
            group.append(example)
        else:
            groups.append([example])
    gather: list[int] = []
    scatter = [0] * starts[-1]
    for group in groups:
        for example in group:
            start, length = starts[example], lengths[example]
            scatter[start:start + length] = range(len(gather), len(gather) + length)
            gather += [*range(start, start + length), *[start] * (lengths[group[0]] - length)]
    return AttentionGroups(gather=torch.tensor(gather), scatter=torch.tensor(scatter),
                           shapes=[(len(group), lengths[group[0]]) for group in groups])


@dataclass
class PackedBatch:
    """Examples back to back in one sequence; usable wherever a `Batch` is read (same field names).

    `position_ids` restart at 0 per example; `example_index` numbers the examples in order; `cu_seq_lens`
    holds where each example starts, and the sequence's length last; `example_lengths` the same on the host;
    `attention` how attention batches the examples, laid out on the host so it never reads the device. The
    target fields are `Batch`'s, per example.
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
    attention: AttentionGroups

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
        target_positions=positions, target_groups=groups, target_counts=counts,
        attention=attention_groups(lengths))


@torch.compiler.disable  # a compiled decoder layer runs it eagerly: its loop over groups would be unrolled
def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                     cu_seq_lens_q: torch.Tensor | None = None, **kwargs):
    """Causal attention within each example of a packed sequence, one batched call per group of similar-length
    examples; unpacked calls (evals) are plain SDPA. The groups come from the batch (set by `packed_hidden_states`)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    layout = _ATTENTION_GROUPS.get() or attention_groups((cu_seq_lens_q[1:] - cu_seq_lens_q[:-1]).tolist())
    heads, dim = query.shape[1], query.shape[-1]
    scaling = dim ** -0.5 if scaling is None else scaling
    sizes = [examples * length for examples, length in layout.shapes]
    padded = zip(*(t[0].index_select(1, layout.gather).split(sizes, dim=1) for t in (query, key, value)),
                 layout.shapes, strict=True)
    outputs = []
    for q, k, v, (examples, length) in padded:
        q, k, v = (t.unflatten(1, (examples, length)).transpose(0, 1) for t in (q, k, v))
        out = group_attention(module, q, k, v, dropout, scaling)
        outputs.append(out.reshape(examples * length, heads, dim))
    return torch.cat(outputs).index_select(0, layout.scatter)[None], None


# Up to this length matmul_attention beats SDPA's float32 flash kernel on a CPU; beyond it flash does (2 cores,
# forward and backward, ~1,000 tokens: 8.6 against 10.3 ms at 128 tokens, 11.5 against 13.6 at 192, 17.8
# against 16.7 at 256); and the score matrices it keeps for backward grow with the length.
MATMUL_ATTENTION_MAX_LENGTH = 192


def group_attention(module, query, key, value, dropout: float, scaling: float) -> torch.Tensor:
    """Causal attention of one group of equal-length examples: [examples, heads, length, dim] in,
    [examples, length, heads, dim] out."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.device.type != "cpu":
        return sdpa_attention_forward(module, query, key, value, None, dropout=dropout, scaling=scaling,
                                      is_causal=True)[0]
    if _MATMUL_ATTENTION.get() and query.shape[2] <= MATMUL_ATTENTION_MAX_LENGTH and not (module.training and dropout):
        return matmul_attention(query, key, value, scaling)
    # In float32: on a CPU, SDPA's bf16 kernels take twice as long as its fp32 ones.
    with torch.autocast("cpu", enabled=False):  # autocast would put SDPA back into bf16
        out = sdpa_attention_forward(module, query.float(), key.float(), value.float(), None, dropout=dropout,
                                     scaling=scaling, is_causal=True)[0]
    return out.to(query.dtype)


def matmul_attention(query, key, value, scaling: float) -> torch.Tensor:
    """Causal attention as two batched matmuls and a softmax, all in the inputs' dtype, rounded as transformers'
    eager attention rounds (the softmax accumulates in float32 and rounds its output once); [examples, heads,
    length, dim] in, [examples, length, heads, dim] out. The query heads that share a key head are stacked, so
    keys and values are never copied per query head. Only the softmax output is kept for backward."""
    examples, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    stacked = query.reshape(examples, kv_heads, heads // kv_heads * length, dim)
    scores = torch.matmul(stacked, key.transpose(-1, -2)).view(examples, kv_heads, -1, length, length)
    # no token sees a later one
    future = torch.full((length, length), float("-inf"), device=query.device, dtype=scores.dtype).triu(1)
    probs = torch.add(future, scores, alpha=scaling).softmax(-1)
    out = torch.matmul(probs.view(examples, kv_heads, -1, length), value)
    return out.view(examples, heads, length, dim).transpose(1, 2)


def use_packed_attention(model) -> None:
    """Register `packed_attention` with transformers (once) and switch `model` to it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTENTION, packed_attention)
        AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # what the unpacked calls get
    if model.config._attn_implementation != ATTENTION:
        model.set_attn_implementation(ATTENTION)


def packed_hidden_states(model, batch: PackedBatch, matmul_attention: bool = True) -> torch.Tensor:
    """The decoder's last hidden states for a packed batch; every token sees only its own example."""
    use_packed_attention(model)
    layout, matmul = _ATTENTION_GROUPS.set(batch.attention), _MATMUL_ATTENTION.set(matmul_attention)
    try:
        return model.get_decoder()(input_ids=batch.input_ids, position_ids=batch.position_ids,
                                   cu_seq_lens_q=batch.cu_seq_lens, cu_seq_lens_k=batch.cu_seq_lens).last_hidden_state
    finally:
        _ATTENTION_GROUPS.reset(layout)
        _MATMUL_ATTENTION.reset(matmul)


def packed_target_token_nll(model, batch: PackedBatch, chunk_size: int | None = None, chunked: bool = True,
                            matmul_attention: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example of the batch (in `example_index` order): summed cross-entropy of its targets, and their count.

    Same as `hone.models.scoring.target_token_nll`, but with positions restarting per example and attention
    within each example; the lm_head runs only on positions that predict a target, in chunks.
    """
    hidden = packed_hidden_states(model, batch, matmul_attention)
    return grouped_target_nll(model, hidden, batch, chunk_size, chunked)
