"""The Python API behind `hone train`: set up a run directory, train, write the summary."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch
import yaml

import hone
from hone.errors import HoneError
from hone.models import check_precision, fingerprint, frozen_dtype, load_model, load_tokenizer, local_model_dir
from hone.models.loading import peft_quietly
from hone.train.checkpoint import latest_checkpoint
from hone.train.config import TrainConfig, dump_config, parse_config
from hone.train.data import TrainingData, load_training_data
from hone.train.distributed import Distributed
from hone.train.loop import Trainer
from hone.train.lora_forward import fuse_lora_forward
from hone.train.memory import keep_freed_memory, memory_plan, refuse_if_it_cannot_fit, with_lora
from hone.train.tracking import NullTracker, Tracker


def code_version() -> str:
    """hone's version plus the git commit when running from a checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{hone.__version__}+{commit}" if commit else hone.__version__


def build_lora_model(config: TrainConfig, dtype: torch.dtype, device: str = "cpu"):
    """The frozen base in `dtype` with trainable LoRA (or DoRA) adapters, kept in float32, from PEFT. For qlora
    the base's linear layers are 4-bit NF4 (bitsandbytes) computing in `dtype`, and its other weights float32."""
    from peft import LoraConfig, prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    qlora = config.method == "qlora"
    # The QLoRA recipe: NF4 suits normally distributed weights; double quantization also packs the block scales.
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=dtype) if qlora else None
    # loaded straight onto the training device: a 4-bit base is quantized there, and a GPU run never holds a
    # second copy of the weights in host memory
    base = load_model(config.base_model, dtype=dtype, device=device, quantization=quantization)
    base.config.use_cache = False
    if qlora:
        with peft_quietly():
            base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    lora = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                      target_modules=config.lora.target_modules, use_dora=config.method == "dora",
                      task_type="CAUSAL_LM")
    model = with_lora(base, lora)
    if config.training.fused_lora_forward:
        fuse_lora_forward(model)
    return model


def build_model(config: TrainConfig, dtype: torch.dtype, device: str = "cpu"):
    """The model the run trains, on `device`: for method full the whole base (float32 weights, compute in `dtype`
    under autocast), else the frozen base with an adapter. With training.compile the decoder is compiled."""
    if config.method == "full":
        model = load_model(config.base_model, dtype=torch.float32, device=device)
        model.config.use_cache = False
        model.requires_grad_(True)
    else:
        model = build_lora_model(config, dtype, device)
    if config.training.compile:
        # Layer by layer: the layers share one compiled graph, so compiling costs one layer's time, not the
        # decoder's. Dynamic shapes: batches differ in length, and a recompile per length would cost more.
        for layer in model.get_decoder().layers:
            layer.compile(dynamic=True)
    return model


def make_trainer(config: TrainConfig, model, data: TrainingData, run_dir: Path, pad_id: int, **options) -> Trainer:
    """The loop for the run's method: supervised, or DPO on preference pairs."""
    if config.method == "dpo":
        from hone.train.dpo import DPOTrainer

        return DPOTrainer(config, model, data, run_dir, pad_id=pad_id, **options)
    return Trainer(config, model, data, run_dir, pad_id=pad_id, **options)


def new_run_dir(config: TrainConfig, config_path: Path | None) -> Path:
    stem = config.run_name or (config_path.stem if config_path else "run")
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = Path(config.output_dir) / f"{stem}-{stamp}"
    suffix = 1
    while run_dir.exists():
        run_dir, suffix = Path(config.output_dir) / f"{stem}-{stamp}-{suffix}", suffix + 1
    return run_dir


def create_run_dir(config: TrainConfig, config_path: Path | None) -> Path:
    """A new run directory holding the fully resolved config; HoneError naming output_dir if it cannot be made."""
    output = Path(config.output_dir)
    hint = "set output_dir to a folder you can write to, e.g. --set output_dir=runs"
    try:
        blocker = next((p for p in (output, *output.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise HoneError(f"output_dir {output}: {blocker} is a file, not a folder", hint=hint)
        run_dir = new_run_dir(config, config_path)
        run_dir.mkdir(parents=True)
        (run_dir / "config.yaml").write_text(dump_config(config))
    except OSError as error:
        raise HoneError(f"output_dir {output}: cannot create a run directory there ({error.strerror or error})",
                        hint=hint) from None
    return run_dir


def prepare_fixed_run_dir(config: TrainConfig, run_dir: Path) -> Path | None:
    """Make `run_dir` ready for `config`: the folder itself when it holds a checkpoint to continue from, else
    None after clearing what an attempt that died before its first checkpoint left."""
    if latest_checkpoint(run_dir / "checkpoints") is not None:
        return run_dir
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(dump_config(config))
    return None


def finished_summary(run_dir: Path) -> dict | None:
    """The run's summary when it ended (not by an interrupt) at its newest checkpoint, else None."""
    path, checkpoint = Path(run_dir) / "summary.json", latest_checkpoint(Path(run_dir) / "checkpoints")
    if not path.is_file() or checkpoint is None:
        return None
    summary = json.loads(path.read_text())
    step = json.loads((checkpoint / "progress.json").read_text())["global_step"]
    if summary.get("interrupted", True) or step < summary.get("steps", 0):
        return None
    return summary


def refuse_finished_run(run_dir: Path) -> None:
    """A HoneError when the run ended (its summary is not of an interrupt) at its newest checkpoint: resuming would
    train nothing and overwrite the summary. From an earlier checkpoint the run is simply trained to its end again."""
    summary = finished_summary(run_dir)
    if summary is None:
        return
    how = "stopped early" if summary.get("stopped_early") or summary.get("pruned") else "finished"
    raise HoneError(f"the run in {run_dir} already {how} at step {summary.get('steps')} of "
                    f"{summary.get('total_steps')}; nothing to resume",
                    hint=f"its weights are in {run_dir}; to train again start a new run: "
                    f"hone train {Path(run_dir) / 'config.yaml'}")


def last_logged_train_loss(run_dir: Path) -> float | None:
    """The train loss of the last line of RUN_DIR/metrics.jsonl (a run resumed at its last step trains none)."""
    path = Path(run_dir) / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return json.loads(lines[-1]).get("train_loss") if lines else None


def read_run_config(run_dir: Path) -> TrainConfig:
    """The resolved config a run directory was started with."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise HoneError(f"{run_dir} is not a hone run directory: {path} is missing")
    raw = yaml.safe_load(path.read_text())
    if isinstance(raw, dict):
        raw.setdefault("replay", None)  # a run started before replay was a default trained without it
    return parse_config(raw, source=str(path))


def train(config: TrainConfig, *, config_path: Path | None = None, resume_dir: Path | None = None,
          run_dir: Path | None = None, show_progress: bool = True,
          on_eval: Callable[[int, float], bool] | None = None) -> Path:
    """Train `config` into a new run directory, or continue the run in `resume_dir`; returns the run dir.

    With `run_dir` (a job's fixed folder) the run goes there: continued from its newest checkpoint when it
    has one, else started afresh. `on_eval(step, eval_loss)` is called after each eval; returning True stops
    the run, marked as pruned.
    """
    started = time.time()
    settings = (config if config is not None else read_run_config(Path(resume_dir))).training
    dist = Distributed.from_env(device=settings.device)
    device = str(dist.device)
    check_precision(device, settings.precision)
    if run_dir is not None:
        resume_dir = dist.on_main(lambda: prepare_fixed_run_dir(config, Path(run_dir)))
        run_dir = Path(run_dir)
    if resume_dir is not None:
        run_dir = Path(resume_dir)
        config = read_run_config(run_dir)
        refuse_finished_run(run_dir)
    elif run_dir is None:
        run_dir = dist.on_main(lambda: create_run_dir(config, config_path))  # one run directory for all ranks
    torch.manual_seed(config.training.seed)
    tokenizer = load_tokenizer(config.base_model)
    data = load_training_data(config, tokenizer, on_main=dist.on_main, show_progress=show_progress and dist.is_main)
    if data.replay.warning and dist.is_main:
        print(f"warning: {data.replay.warning}", file=sys.stderr)
    memory = memory_plan(config, max(len(example) for example in data.train), device, dist.world_size)
    refuse_if_it_cannot_fit(memory)  # before loading: on a GPU it would fail minutes later, out of memory
    if memory["warning"] and dist.is_main:
        print(f"warning: {memory['warning']}", file=sys.stderr)
    dtype = frozen_dtype(device, config.training.precision)
    if config.training.keep_freed_memory:
        keep_freed_memory()
    model = dist.prepare_model(build_model(config, dtype, device), config)
    with start_tracking(config, run_dir, data) if dist.is_main else NullTracker() as tracker:
        trainer = make_trainer(config, model, data, run_dir, tokenizer.pad_token_id,
                               show_progress=show_progress and dist.is_main, tracker=tracker, on_eval=on_eval)
        if resume_dir is not None and not trainer.resume():
            raise HoneError(f"{run_dir}/checkpoints holds no checkpoint to resume from")
        outcome = trainer.fit()
        if outcome["final_train_loss"] is None:  # resumed from a checkpoint at the last step: nothing left to train
            outcome["final_train_loss"] = last_logged_train_loss(run_dir)
        if dist.is_main:  # the other ranks hold the same weights and figures
            weights = run_dir / trainer.weights_folder
            tokenizer.save_pretrained(weights)  # the adapter (or model) folder then also serves chat as-is
            summary = write_summary(run_dir, config, data, trainer, outcome, dtype, time.time() - started,
                                    memory["total_gib"], tracker.run_id)
            tracker.log_summary(summary)
            tracker.log_artifacts(weights, trainer.weights_folder)
            if outcome["interrupted"]:
                tracker.finish("KILLED")  # resumable: `hone train --resume` continues this MLflow run
    dist.close()
    return run_dir


def start_tracking(config: TrainConfig, run_dir: Path, data: TrainingData):
    """The MLflow tracker of this run: a new MLflow run, or the one a resumed run started (its id is kept
    in RUN_DIR/tracking.json)."""
    record = run_dir / "tracking.json"
    run_id = json.loads(record.read_text())["run_id"] if record.is_file() else None
    tags = {"base_model_fingerprint": fingerprint(config.base_model), "dataset_fingerprint": data.fingerprint,
            "dataset_id": data.dataset_id or "", "replay_fingerprint": data.replay.fingerprint or "",
            "code_version": code_version(), "run_dir": str(run_dir)}
    tracker = Tracker.start(config.tracking, run_dir.name, config.model_dump(mode="json"), tags, run_id=run_id)
    if tracker.run_id and run_id is None:
        record.write_text(json.dumps({"uri": tracker.uri, "run_id": tracker.run_id}, indent=2) + "\n")
    return tracker


def device_description(device: torch.device) -> str:
    """The device a run trained on, for its documentation: "cuda (NVIDIA H200)", "cpu (2 threads)"."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"{device.type} ({torch.get_num_threads()} threads)"


def write_summary(run_dir: Path, config: TrainConfig, data: TrainingData, trainer: Trainer, outcome: dict,
                  dtype: torch.dtype, wall_seconds: float, memory_estimate_gib: float,
                  mlflow_run_id: str | None) -> dict:
    """summary.json: final figures, fingerprints of data, replay and base model, code version, wall time."""
    p = trainer.progress
    summary = {
        "run_dir": str(run_dir),
        "method": config.method,
        "base_model": config.base_model,
        "base_model_dir": str(local_model_dir(config.base_model)),
        "base_model_fingerprint": fingerprint(config.base_model),
        "dataset_fingerprint": data.fingerprint,
        "dataset_id": data.dataset_id,
        "code_version": code_version(),
        "frozen_dtype": str(dtype).replace("torch.", ""),
        "device": device_description(next(trainer.model.parameters()).device),
        "examples": {"train": len(data.train), "eval": len(data.eval), "skipped": data.skipped,
                     "replay": data.replay.examples},
        "replay": data.replay.to_dict(),
        "trainable_parameters": sum(x.numel() for x in trainer.model.parameters() if x.requires_grad),
        "steps": p.global_step,
        "total_steps": outcome["total_steps"],
        "epochs_completed": round(p.epoch + p.batch_in_epoch / trainer.batches_per_epoch, 4),
        "final_train_loss": outcome["final_train_loss"],
        "best_eval_loss": p.best_eval_loss,
        "best_step": p.best_step,
        "stopped_early": outcome["stopped_early"],
        "pruned": outcome["pruned"],
        "interrupted": outcome["interrupted"],
        "tokens": p.tokens,
        "train_seconds": round(p.train_seconds, 2),
        "tokens_per_s": round(p.tokens / max(p.train_seconds, 1e-9), 1),
        "wall_seconds": round(wall_seconds, 2),
        "memory_estimate_gib": memory_estimate_gib,
        "mlflow_run_id": mlflow_run_id,
        "adapter_dir": str(run_dir / "adapter") if trainer.weights_folder == "adapter" else None,
        "model_dir": str(run_dir / "model") if trainer.weights_folder == "model" else None,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
