"""Resumable training state: adapter weights, optimizer, scheduler, RNG and position in the data."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from hone.errors import HoneError


@dataclass
class Progress:
    """Where training stands; enough to continue exactly where it stopped."""

    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of `epoch` already consumed
    tokens: int = 0
    train_seconds: float = 0.0
    best_eval_loss: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(folder: Path, model, optimizer, scheduler, progress: Progress, keep: int = 2,
                    servable: Callable[[Path], None] | None = None, scaler=None) -> Path:
    """Write a checkpoint atomically under `folder/step-N` and keep only the newest `keep` of them.

    `servable(folder)` writes weights a server can load as they are (an adapter) into the checkpoint too; an fp16
    run's loss `scaler` keeps its scale, so a resumed run steps as the uninterrupted one would.
    """
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"step-{progress.global_step:07d}"
    staging = folder / f".tmp-{target.name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    save_file(trainable_state(model), str(staging / "trainable.safetensors"))
    optim = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    if scaler is not None:
        optim["scaler"] = scaler.state_dict()
    torch.save(optim, staging / "optim.pt")
    rng = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():  # dropout on a GPU draws from the GPU's own generators
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, staging / "rng.pt")
    (staging / "progress.json").write_text(json.dumps(asdict(progress), indent=2))
    if servable is not None:
        servable(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    for old in sorted(folder.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def latest_checkpoint(folder: Path) -> Path | None:
    found = sorted(folder.glob("step-*"))
    return found[-1] if found else None


def load_checkpoint(path: Path, model, optimizer, scheduler, scaler=None) -> Progress:
    """Restore everything `save_checkpoint` wrote; the next step is the one that would have come next."""
    try:
        weights = load_file(str(path / "trainable.safetensors"))
        params = dict(model.named_parameters())
        for name, value in weights.items():
            params[name].data.copy_(value)
        state = torch.load(path / "optim.pt", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        rng = torch.load(path / "rng.pt", weights_only=False)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        return Progress(**json.loads((path / "progress.json").read_text()))
    except (OSError, KeyError, ValueError) as error:
        raise HoneError(f"checkpoint {path} cannot be restored: {error}",
                        hint="resume from an earlier checkpoint folder or start a new run") from None
