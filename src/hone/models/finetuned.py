"""Load a model for inference by base-model name or by a `hone train` run directory (base + LoRA adapter)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from hone.errors import HoneError
from hone.models.loading import frozen_dtype, load_model, load_tokenizer, peft_quietly, sha256_file

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass(frozen=True)
class RunModel:
    """What a run directory holds for inference: the base model's name and the adapter folder."""

    run_dir: Path
    base: str
    adapter_dir: Path


@dataclass(frozen=True)
class ModelInfo:
    """Which model was loaded: the base name and, for a run directory, where the adapter came from."""

    name: str
    base: str
    adapter: Path | None = None
    run_dir: Path | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "base": self.base, "adapter": str(self.adapter) if self.adapter else None,
                "run_dir": str(self.run_dir) if self.run_dir else None}


def is_run_dir(path: str | Path) -> bool:
    """True for a folder written by `hone train` (it has config.yaml), or for its adapter/ subfolder."""
    path = Path(path).expanduser()
    if not path.is_dir():
        return False
    adapter_subfolder = (path / "adapter_config.json").is_file() and (path.parent / "config.yaml").is_file()
    return (path / "config.yaml").is_file() or adapter_subfolder


def read_run_dir(run_dir: str | Path) -> RunModel:
    """The base-model name (from RUN_DIR/config.yaml) and the checked adapter folder of a run directory."""
    run_dir = Path(run_dir).expanduser().resolve()
    if not run_dir.is_dir():
        raise HoneError(f"run directory not found: {run_dir}",
                        hint="pass the folder `hone train` printed when it finished")
    if (run_dir / "adapter_config.json").is_file() and not (run_dir / "config.yaml").is_file():
        run_dir = run_dir.parent  # the user pointed at RUN_DIR/adapter
    return RunModel(run_dir=run_dir, base=run_base_model(run_dir), adapter_dir=_adapter_dir(run_dir))


def run_base_model(run_dir: Path) -> str:
    """The base model a run directory's config.yaml names; a clear error when it names none."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise HoneError(f"{run_dir} is not a run directory: it has no config.yaml",
                        hint="pass the folder `hone train` printed; it holds config.yaml and adapter/")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise HoneError(f"{path}: not valid YAML: {error}") from None
    base = config.get("base_model") if isinstance(config, dict) else None
    if not isinstance(base, str) or not base:
        raise HoneError(f"{path}: no 'base_model' key at the top level, so the base model is unknown",
                        hint="add `base_model: NAME` (the model the adapter was trained on) to that file")
    return base


def full_model_dir(run_dir: str | Path) -> Path | None:
    """RUN_DIR/model of a full fine-tune (a whole Hugging Face model), or None for adapter runs."""
    folder = Path(run_dir).expanduser() / "model"
    return folder if (folder / "config.json").is_file() else None


def _adapter_dir(run_dir: Path) -> Path:
    adapter = run_dir / "adapter"
    if not adapter.is_dir() and full_model_dir(run_dir):
        raise HoneError(f"{run_dir} is a full fine-tune: it holds a whole model in {run_dir / 'model'}, not an "
                        "adapter to put on a base", hint=f"use {run_dir / 'model'} wherever a base model name is "
                        "taken (e.g. as the eval base, or `hone chat --model`)")
    missing = [name for name in ADAPTER_FILES if not (adapter / name).is_file()]
    if missing:
        raise HoneError(
            f"run directory {run_dir} has no usable adapter: {adapter} lacks {', '.join(missing)}",
            hint="the adapter is written when training finishes; if the run was interrupted, finish it with "
            f"`hone train --resume {run_dir}`",
        )
    return adapter


def adapter_fingerprint(adapter_dir: Path) -> str:
    """sha256 of the adapter weights file."""
    return sha256_file(Path(adapter_dir) / "adapter_model.safetensors")


def attach_adapter(model, adapter_dir: Path, base: str, name: str = "default"):
    """Wrap `model` with the PEFT LoRA adapter in `adapter_dir` under `name`, frozen for inference; a model
    already wrapped gets it as one more adapter."""
    from peft import PeftModel

    try:
        with peft_quietly():
            if isinstance(model, PeftModel):
                model.load_adapter(str(adapter_dir), adapter_name=name, is_trainable=False)
                return model
            return PeftModel.from_pretrained(model, str(adapter_dir), adapter_name=name, is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as error:
        raise HoneError(f"the adapter in {adapter_dir} does not fit base model '{base}': {error}",
                        hint="use the base model the adapter was trained on (base_model in the run's "
                        "config.yaml)") from None


def default_device() -> str:
    """The first CUDA GPU when there is one, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_for_inference(name_or_run_dir: str | Path, dtype: torch.dtype | None = None,
                       device: str | None = None):
    """Load `(model, tokenizer, info)` for a base-model name or a run directory, in eval mode.

    A run directory loads the base named in its config.yaml with its adapter on top. The dtype defaults
    to bf16 where the hardware runs it fast, else float32.
    """
    device = device or default_device()
    dtype = dtype or frozen_dtype(device)
    if is_run_dir(name_or_run_dir) and (whole := full_model_dir(name_or_run_dir)):
        name_or_run_dir = whole  # a full fine-tune loads like any model folder
    run = read_run_dir(name_or_run_dir) if is_run_dir(name_or_run_dir) else None
    base = run.base if run else str(name_or_run_dir)
    model = load_model(base, dtype=dtype, device=device)
    if run:
        model = attach_adapter(model, run.adapter_dir, base)
    model.eval()
    info = ModelInfo(name=str(name_or_run_dir), base=base, adapter=run.adapter_dir if run else None,
                     run_dir=run.run_dir if run else None)
    return model, load_tokenizer(base), info
