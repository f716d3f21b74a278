"""Loss on trained tokens only: the lm_head and cross-entropy never run on prompt or padding positions."""

from __future__ import annotations

import torch

from hone.models.scoring import Batch, target_token_nll


def trained_token_loss(model, batch: Batch, chunk_size: int | None = None,
                       chunked: bool = True) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the batch's trained target tokens, and their count."""
    per_row, _ = target_token_nll(model, batch, chunk_size, chunked)
    return per_row.sum(), batch.num_trained
