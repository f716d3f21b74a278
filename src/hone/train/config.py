"""The training config: one pydantic schema validates the whole YAML, with cross-field checks.

Unknown keys are rejected with a "did you mean ..." suggestion instead of being silently ignored.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hone.errors import HoneError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    train: Path = Field(description="Training file (any format `hone data validate` accepts).")
    eval: Path | None = Field(None, description="Held-out file for eval loss; else eval_fraction of train.")
    eval_fraction: float = Field(0.0, ge=0.0, lt=0.5, description="Share of train held out when no eval file.")
    max_length: int = Field(1024, ge=16, description="Examples longer than this (in tokens) are skipped.")


class LoraConfig(Section):
    r: int = Field(16, ge=1)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: str | list[str] = Field("all-linear", description="'all-linear' or module names.")


class TrainingConfig(Section):
    epochs: float = Field(1, gt=0)
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    batch_size: int = Field(8, ge=1, description="Examples per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    group_by_length: bool = Field(True, description="Batch examples of similar length to avoid padding.")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="dtype of the frozen weights.")
    eval_every: int | None = Field(None, ge=1, description="Eval loss every N optimizer steps (and at the end).")
    early_stopping_patience: int | None = Field(None, ge=1, description="Evals without improvement to stop.")
    save_every: int | None = Field(None, ge=1, description="Checkpoint every N optimizer steps (+ every epoch).")
    save_total_limit: int = Field(2, ge=1, description="Newest checkpoints kept on disk.")
    log_every: int = Field(1, ge=1)
    seed: int = 42


class TrainConfig(Section):
    base_model: str = Field("smollm2-135m-instruct", description="Catalog name, HF folder or .gguf file.")
    method: Literal["lora"] = "lora"
    data: DataConfig
    lora: LoraConfig = LoraConfig()
    training: TrainingConfig = TrainingConfig()
    output_dir: Path = Path("runs")
    run_name: str | None = None

    @model_validator(mode="after")
    def _check_eval(self) -> TrainConfig:
        if self.training.early_stopping_patience and not (self.data.eval or self.data.eval_fraction):
            raise ValueError("training.early_stopping_patience needs data.eval or data.eval_fraction > 0")
        return self


# Names other fine-tuning tools use for our settings, so their users get pointed at ours.
ALIASES = {
    "learning_rate": "lr", "num_epochs": "epochs", "num_train_epochs": "epochs",
    "micro_batch_size": "batch_size", "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum", "lr_scheduler": "scheduler",
    "lr_scheduler_type": "scheduler", "rank": "r", "lora_r": "r", "lora_alpha": "alpha",
    "lora_dropout": "dropout", "lora_target_modules": "target_modules", "sequence_len": "max_length",
    "max_seq_length": "max_length", "model": "base_model", "base_model_name_or_path": "base_model",
}


def suggest(key: str, choices: list[str]) -> str | None:
    """The known key a mistyped or foreign key most likely means."""
    if ALIASES.get(key) in choices:
        return ALIASES[key]
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.6)
    return close[0] if close else None


def _known_keys(model: type[BaseModel], path: tuple[str, ...]) -> list[str]:
    for part in path:
        annotation = model.model_fields[part].annotation
        model = next((a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)
                      and issubclass(a, BaseModel)), annotation)
    return list(model.model_fields)


def _describe(error: dict, source: str) -> str:
    location = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        *parent, key = [str(p) for p in error["loc"]]
        try:
            choices = _known_keys(TrainConfig, tuple(parent))
        except (KeyError, AttributeError):
            choices = []
        guess = suggest(key, choices)
        hint = f"; did you mean '{guess}'?" if guess else f"; known keys: {', '.join(choices)}"
        return f"{source}: {location}: unknown key{hint}"
    return f"{source}: {location or '(top level)'}: {error['msg']}"


def parse_config(raw: dict[str, Any], source: str = "config") -> TrainConfig:
    """Validate a config dict; every problem is reported with its dotted key path."""
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as error:
        lines = [_describe(e, source) for e in error.errors()]
        raise HoneError("invalid training config:\n  " + "\n  ".join(lines)) from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set key.sub=value` overrides; values are parsed as YAML (numbers, booleans, lists)."""
    for item in overrides:
        if "=" not in item:
            raise HoneError(f"--set {item!r}: expected key=value, e.g. --set training.lr=1e-4")
        key, value = item.split("=", 1)
        node = raw
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise HoneError(f"--set {item!r}: '{part}' is not a section")
        node[leaf] = yaml.safe_load(value)
    return raw


def load_config(path: Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML training config, apply overrides, resolve data paths relative to the config file."""
    path = Path(path)
    if not path.is_file():
        raise HoneError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise HoneError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise HoneError(f"{path}: expected a mapping of settings at the top level")
    config = parse_config(apply_overrides(raw, overrides or []), source=str(path))
    for key in ("train", "eval"):
        value = getattr(config.data, key)
        if value is not None and not value.is_absolute() and not value.exists():
            setattr(config.data, key, (path.parent / value).resolve())
    return config


def dump_config(config: TrainConfig) -> str:
    """The fully resolved config as YAML (every default spelled out)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
