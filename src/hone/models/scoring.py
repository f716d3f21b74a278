"""How likely a model finds given tokens: the negative log-likelihood of target tokens, per example.

Training (the loss), evaluation (perplexity of references) and the forgetting probe share this code.
The lm_head runs only on positions that predict a target token, in chunks, so full-vocabulary logits
are never built for a whole batch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hone.data.render import RenderedExample

# Logits computed at once by the chunked loss (16 MB in float32): chunks this small are served from memory the
# allocator already holds, while bigger ones are fresh pages from the system every step (about 15% of a step
# on the 2-core CPU, against 2,048-row chunks).
LOGITS_PER_CHUNK = 1 << 22


@dataclass
class Batch:
    """A right-padded batch; `trained` marks the target tokens (the ones the loss is computed on).

    Where the targets are and how many there are is worked out on the host when the batch is made, so the loss
    never waits on the device to find them: `target_positions` holds the flat position (row * width + column)
    of every token that predicts a target, `target_groups` the row each target belongs to, `target_counts` the
    targets per row.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    trained: torch.Tensor
    target_positions: torch.Tensor
    target_groups: torch.Tensor
    target_counts: list[int]
    num_tokens: int

    @property
    def num_trained(self) -> int:
        """Target tokens: trained positions that have a token before them to predict from."""
        return sum(self.target_counts)


def on_device(batch, device: torch.device):
    """The batch's tensors on the model's device (a GPU model is scored on its GPU)."""
    if batch.input_ids.device == device:
        return batch
    return dataclasses.replace(batch, **{f.name: value.to(device) for f in dataclasses.fields(batch)
                                         if isinstance(value := getattr(batch, f.name), torch.Tensor)})


def target_layout(examples: list[RenderedExample], starts: list[int]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """For examples laid out from the flat positions `starts`: the position of every token that predicts a trained
    token of its own example, the example each belongs to, and how many each example has; counted on the host."""
    positions: list[int] = []
    groups: list[int] = []
    counts: list[int] = []
    for number, (example, start) in enumerate(zip(examples, starts, strict=True)):
        mine = [start + column for column, flag in enumerate(example.trained[1:]) if flag]
        positions += mine
        groups += [number] * len(mine)
        counts.append(len(mine))
    return torch.tensor(positions, dtype=torch.long), torch.tensor(groups, dtype=torch.long), counts


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
    positions, groups, counts = target_layout(examples, [row * width for row in range(len(examples))])
    return Batch(input_ids=ids, attention_mask=mask, trained=trained, target_positions=positions,
                 target_groups=groups, target_counts=counts, num_tokens=sum(len(example) for example in examples))


def target_token_nll(model, batch: Batch, chunk_size: int | None = None,
                     chunked: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of the batch: summed cross-entropy of its target tokens, and how many there are (on the host)."""
    hidden = model.get_decoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    return grouped_target_nll(model, hidden, batch, chunk_size, chunked)


def grouped_target_nll(model, hidden: torch.Tensor, batch, chunk_size: int | None = None,
                       chunked: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """From the decoder's `hidden` states: summed cross-entropy of the batch's target tokens per group (a row,
    or a packed example: `batch.target_groups`), and each group's target count (on the host).

    `chunked=False` is the standard way, kept to measure against: the lm_head runs on every position and
    the full logits tensor is built before the target positions are picked out.
    """
    positions = batch.target_positions
    targets = batch.input_ids.flatten()[positions + 1]  # the token after each predicting position
    per_group = hidden.new_zeros(len(batch.target_counts), dtype=torch.float32)
    counts = torch.tensor(batch.target_counts, dtype=torch.long)
    head = model.get_output_embeddings()
    if not chunked:
        logits = head(hidden).float().flatten(0, 1)[positions]
        return per_group.index_add(0, batch.target_groups, F.cross_entropy(logits, targets, reduction="none")), counts
    rows = hidden.flatten(0, 1).index_select(0, positions)
    chunk_size = chunk_size or max(1, LOGITS_PER_CHUNK // head.weight.shape[0])
    for part, part_targets, part_groups in zip(rows.split(chunk_size), targets.split(chunk_size),
                                               batch.target_groups.split(chunk_size), strict=True):
        losses = F.cross_entropy(head(part).float(), part_targets, reduction="none")
        per_group = per_group.index_add(0, part_groups, losses)
    return per_group, counts


@torch.no_grad()
def example_perplexities(model, examples: list[RenderedExample], pad_id: int, batch_size: int = 8) -> list[
        float | None]:
    """Perplexity of each example's trained tokens (exp of their mean NLL); None when it has none.

    Examples are batched in length order so little compute goes to padding; results keep input order.
    """
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]))
    result: list[float | None] = [None] * len(examples)
    for start in range(0, len(order), batch_size):
        indices = order[start:start + batch_size]
        batch = collate([examples[i] for i in indices], pad_id)
        nll, counts = target_token_nll(model, on_device(batch, model.device))
        for index, total, count in zip(indices, nll.tolist(), counts.tolist(), strict=True):
            result[index] = math.exp(total / count) if count else None
    return result
