"""Loss on trained tokens only: the lm_head and cross-entropy never run on prompt or padding positions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hone.train.batching import Batch


def trained_token_loss(model, batch: Batch, chunk_size: int = 2048) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over trained target tokens, and their count.

    Runs the transformer body, keeps the hidden states that predict a trained token, and applies the
    output layer to those rows only, in chunks, so full-vocabulary logits are never built for the batch.
    """
    body, head = model.get_decoder(), model.get_output_embeddings()
    hidden = body(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    select = batch.trained[:, 1:]
    rows = hidden[:, :-1][select]
    targets = batch.input_ids[:, 1:][select]
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, rows.shape[0], chunk_size):
        logits = head(rows[start:start + chunk_size]).float()
        total = total + F.cross_entropy(logits, targets[start:start + chunk_size], reduction="sum")
    return total, int(targets.numel())
