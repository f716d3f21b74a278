"""The training config: one pydantic schema validates the whole YAML, with cross-field checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from hone.data.curate.replay import SELF, ReplaySettings
from hone.data.versions import is_dataset_dir
from hone.errors import HoneError
from hone.settings import read_yaml_mapping, resolve_relative, validate
from hone.train.tracking import TrackingConfig


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    train: Path = Field(description="Training file (any format `hone data validate` accepts) or a dataset "
                        "folder written by `hone data prepare` (its val split becomes the eval set).")
    eval: Path | None = Field(None, description="Held-out file for eval loss; else eval_fraction of train.")
    eval_fraction: float = Field(0.0, ge=0.0, lt=0.5, description="Share of train held out when no eval file.")
    max_length: int = Field(1024, ge=16, description="Examples longer than this (in tokens) are skipped.")

    @property
    def has_eval_set(self) -> bool:
        """An eval file, a share of train held out, or a `hone data prepare` folder (it brings a val split)."""
        return bool(self.eval or self.eval_fraction or is_dataset_dir(self.train))


class LoraConfig(Section):
    r: int = Field(16, ge=1)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: str | list[str] = Field("all-linear", description="'all-linear' or module names.")


class DpoConfig(Section):
    beta: float = Field(0.1, gt=0, description="How far the policy may move from the reference (higher: less).")


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
    group_by_length: bool = Field(False, description="Batch examples of similar length to avoid padding: faster "
                                  "on data of very uneven length, but batches are less mixed (on the demo data it "
                                  "cost 5% eval loss for no speed).")
    packing: bool = Field(False, description="Pack several examples into each row of data.max_length tokens; "
                          "each token attends only within its own example and positions restart, so no padding "
                          "is computed over.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="dtype of the frozen weights and of the compute (autocast), trained weights staying "
        "float32. auto: bf16 where the hardware runs it fast, fp16 with loss scaling on a GPU without bf16, else "
        "fp32.")
    device: str = Field("auto", description="auto (this process's CUDA GPU when present, else the CPU), cpu, cuda "
                        "or cuda:N.")
    chunked_loss: bool = Field(True, description="Run the lm_head and cross-entropy only on target tokens, in "
                               "chunks, so the full batch x sequence x vocabulary logits are never built.")
    compile: bool = Field(False, description="torch.compile the decoder layers (one compiled graph serves every "
                          "layer, with dynamic shapes): faster steps once compiled, but the first steps pay the "
                          "compile time (about 40 s for SmolLM2-135M on 2 CPU cores), once per process.")
    matmul_attention: bool = Field(True, description="With packing on a CPU, examples of up to 192 tokens attend "
                                   "through bf16 batched matmuls and softmax (rounded as transformers' eager "
                                   "attention rounds), which beats SDPA's float32 flash kernel at those lengths; "
                                   "it keeps their softmax outputs for backward (counted in the memory estimate).")
    fused_lora_forward: bool = Field(True, description="Plain LoRA layers add their update to the base output "
                                     "inside one matmul (addmm, with the scaling folded into the small B), where "
                                     "PEFT makes two more passes over each layer's output; same values.")
    autocast_adapter_inputs: bool = Field(True, description="With bf16 compute, LoRA layers leave the cast of their "
                                          "input to autocast, where PEFT first turns each bf16 input into float32 "
                                          "only for autocast to turn it back.")
    keep_freed_memory: bool = Field(True, description="glibc's malloc keeps the memory a step frees for the next "
                                    "step (blocks up to 32 MB, heap never trimmed) instead of handing it back to "
                                    "the system, whose fresh pages then fault in one by one. Set for the whole "
                                    "training process; no effect with another C library.")
    fused_optimizer: bool = Field(True, description="AdamW updates every trained tensor in one fused kernel "
                                  "(torch's fused=True) instead of a loop of small ops per tensor: same values "
                                  "(to float rounding), a LoRA step's hundreds of small tensors updated at once.")
    eval_every: int | None = Field(None, ge=1, description="Eval loss every N optimizer steps (and at the end).")
    early_stopping_patience: int | None = Field(None, ge=1, description="Evals without improvement to stop.")
    save_every: int | None = Field(None, ge=1, description="Checkpoint every N optimizer steps (+ every epoch).")
    save_total_limit: int = Field(2, ge=1, description="Newest checkpoints kept on disk.")
    log_every: int = Field(1, ge=1)
    seed: int = 42
    distributed: Literal["ddp", "fsdp"] = Field(
        "ddp", description="With several processes (--nproc, torchrun): ddp keeps a whole model on each and sums "
        "gradients; fsdp (lora/dora) also shards the frozen base weights across them, for bases too big for one GPU.")


class ReplayConfig(ReplaySettings):
    """General examples mixed into the training data so the fine-tune keeps the base model's general skills."""

    fraction: float = Field(0.1, ge=0, lt=1, description="Share of the training examples that are replay once "
                            "mixed in; 0 (or `replay: none`) turns replay off.")
    source: str = Field(SELF, description="'self': the base model's own answers to hone's built-in general "
                        "prompts, generated once per base model and cached under $HONE_HOME/replay; or a data file "
                        "of general examples.")
    max_new_tokens: int = Field(256, ge=16, le=4096, description="self: longest generated answer; longer ones are "
                                "cut off, so not used, and the next prompt is tried.")

    @property
    def enabled(self) -> bool:
        return self.fraction > 0


OFF = ("none", "off", "false", "no")


class TrainConfig(Section):
    base_model: str = Field("smollm2-135m-instruct", description="Catalog name, HF folder or .gguf file.")
    method: Literal["lora", "dora", "qlora", "full", "dpo"] = Field(
        "lora", description="lora; dora: LoRA with the weight split into magnitude and direction (PEFT use_dora), "
        "often closer to full fine-tuning at low rank, ~1.5-2x slower per step; qlora: LoRA on a base "
        "quantized to 4-bit NF4 (bitsandbytes): its linear weights take 1/4 of bf16's memory, steps are a bit "
        "slower; full: every weight trained (float32 weights and Adam state: ~16 bytes a parameter), the run "
        "writes a whole model; or dpo: a LoRA adapter trained on preference pairs (OpenAI DPO format) against "
        "the frozen base as the reference.")
    data: DataConfig
    lora: LoraConfig = LoraConfig()
    training: TrainingConfig = TrainingConfig()
    dpo: DpoConfig = DpoConfig()
    replay: ReplayConfig | None = Field(ReplayConfig(), description="General examples mixed into the training data "
                                        "against forgetting (default: 10% answered by the base model itself); "
                                        "`none` turns it off. Not mixed again into a `hone data prepare` folder "
                                        "that already has replay; not used by method dpo.")
    tracking: TrackingConfig = TrackingConfig()
    output_dir: Path = Path("runs")
    run_name: str | None = None

    @field_validator("replay", mode="before")
    @classmethod
    def _replay_off(cls, value: Any) -> Any:
        if value is False or (isinstance(value, str) and value.strip().lower() in OFF):
            return None
        return value

    @field_validator("replay")
    @classmethod
    def _not_for_dpo(cls, value: ReplayConfig | None, info: ValidationInfo) -> ReplayConfig | None:
        if info.data.get("method") == "dpo" and value is not None and value.enabled:
            raise ValueError("does not apply to method dpo: it trains on preference pairs, and general examples "
                             "have no rejected reply; set replay: none")
        return value

    @model_validator(mode="before")
    @classmethod
    def _no_default_replay_for_dpo(cls, raw: Any) -> Any:
        # Preference pairs have no place for general examples: dpo runs have replay off unless the user asked.
        if isinstance(raw, dict) and raw.get("method") == "dpo" and "replay" not in raw:
            return {**raw, "replay": None}
        return raw

    @property
    def replay_enabled(self) -> bool:
        """Whether general examples are to be mixed into the training data."""
        return self.replay is not None and self.replay.enabled

    @model_validator(mode="after")
    def _check_eval(self) -> TrainConfig:
        if self.training.early_stopping_patience and not self.data.has_eval_set:
            raise ValueError("training.early_stopping_patience needs data.eval, data.eval_fraction > 0, or a "
                             "dataset folder from `hone data prepare` as data.train")
        if self.method == "dpo" and self.training.packing:
            raise ValueError("training.packing does not apply to method dpo: each preference pair is scored as "
                             "two whole sequences; set training.packing: false")
        return self


def parse_config(raw: dict[str, Any], source: str = "config") -> TrainConfig:
    """Validate a config dict; every problem is reported with its dotted key path."""
    return validate(TrainConfig, raw, source, "training config")


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
    raw = apply_overrides(read_yaml_mapping(path, "training config"), overrides or [])
    data = raw.get("data")
    if isinstance(data, dict):  # resolved before validation, which looks into a dataset folder
        for key in ("train", "eval"):
            if isinstance(data.get(key), str):
                data[key] = str(resolve_relative(Path(data[key]), path))
    config = parse_config(raw, source=str(path))
    if config.replay is not None and config.replay.source != SELF:
        config.replay.source = str(resolve_relative(Path(config.replay.source), path))
    return config


def dump_config(config: TrainConfig) -> str:
    """The fully resolved config as YAML (every default spelled out)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
