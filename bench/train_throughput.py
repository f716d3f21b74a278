"""Training throughput: hone vs TRL's SFTTrainer on the same model, data and LoRA config, in one run.

Each trainer runs in its own process (so peak RSS is its own); both final adapters are then scored by
the same eval-loss code on the same held-out file. Prints one JSON line.

    python bench/train_throughput.py [--train FILE] [--eval FILE] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRAIN = ROOT / "examples" / "support_tickets" / "train.jsonl"
DEFAULT_EVAL = ROOT / "examples" / "support_tickets" / "test.jsonl"
MODEL = "smollm2-135m-instruct"
SHARED = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear", "max_length": 512,
          "batch_size": 8, "epochs": 1, "lr": 2e-4, "scheduler": "cosine", "warmup_ratio": 0.05, "seed": 42}


def limited_copy(path: Path, limit: int | None, folder: Path) -> Path:
    if not limit:
        return path
    target = folder / path.name
    target.write_text("".join(path.read_text().splitlines(keepends=True)[:limit]))
    return target


def run_hone(train_file: Path, out: Path) -> dict:
    """hone's own loop, configured like the TRL run."""
    from hone.train.config import parse_config
    from hone.train.run import train

    s = SHARED
    config = parse_config({
        "base_model": MODEL,
        "data": {"train": str(train_file), "max_length": s["max_length"]},
        "lora": {k: s[k] for k in ("r", "alpha", "dropout", "target_modules")},
        "training": {"epochs": s["epochs"], "batch_size": s["batch_size"], "lr": s["lr"],
                     "scheduler": s["scheduler"], "warmup_ratio": s["warmup_ratio"], "seed": s["seed"],
                     "log_every": 10},
        "output_dir": str(out), "run_name": "hone",
    })
    run_dir = train(config, show_progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"adapter": str(run_dir / "adapter"), "train_seconds": summary["train_seconds"]}


def run_trl(train_file: Path, out: Path, gradient_checkpointing: bool) -> dict:
    """TRL's SFTTrainer on prompt/completion pairs (loss on the completion only), fp32 on CPU.

    SFTConfig turns gradient checkpointing on by default; the bench runs TRL both ways and compares
    hone with the faster of the two.
    """
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from hone.data.formats import load_chat_examples
    from hone.models import local_model_dir

    s = SHARED
    rows = [{"prompt": e.messages[:-1], "completion": e.messages[-1:]} for e in load_chat_examples(train_file)]
    folder = str(local_model_dir(MODEL))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    args = SFTConfig(output_dir=str(out / "trl"), per_device_train_batch_size=s["batch_size"],
                     num_train_epochs=s["epochs"], learning_rate=s["lr"], lr_scheduler_type=s["scheduler"],
                     warmup_steps=s["warmup_ratio"], max_length=s["max_length"], seed=s["seed"],
                     logging_steps=10, save_strategy="no", report_to=[], use_cpu=True, bf16=False,
                     max_grad_norm=1.0, weight_decay=0.0, dataloader_num_workers=0,
                     gradient_checkpointing=gradient_checkpointing)
    lora = LoraConfig(r=s["r"], lora_alpha=s["alpha"], lora_dropout=s["dropout"],
                      target_modules=s["target_modules"], task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer, peft_config=lora)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    adapter = out / f"trl-adapter-{int(gradient_checkpointing)}"
    trainer.model.save_pretrained(adapter)
    return {"adapter": str(adapter), "train_seconds": seconds}


def dataset_tokens(train_file: Path) -> int:
    """Tokens of every example with the chat template applied: the work both trainers do."""
    from hone.data.formats import load_chat_examples
    from hone.data.render import count_tokens
    from hone.models import load_tokenizer

    tokenizer = load_tokenizer(MODEL)
    return sum(count_tokens(tokenizer, e.messages) for e in load_chat_examples(train_file))


def adapter_eval_loss(adapter: str, eval_file: Path) -> float:
    """Mean cross-entropy per assistant token on the held-out file, the same code for both adapters."""
    from peft import PeftModel

    from hone.data.formats import load_chat_examples
    from hone.data.render import render_chat
    from hone.models import load_model, load_tokenizer
    from hone.train.loop import eval_loss

    tokenizer = load_tokenizer(MODEL)
    model = PeftModel.from_pretrained(load_model(MODEL), adapter)
    examples = [render_chat(tokenizer, e.messages) for e in load_chat_examples(eval_file)]
    return eval_loss(model.get_base_model(), examples, 8, tokenizer.pad_token_id)


TRAINERS = {"hone": run_hone,
            "trl": lambda train_file, out: run_trl(train_file, out, gradient_checkpointing=False),
            "trl_defaults": lambda train_file, out: run_trl(train_file, out, gradient_checkpointing=True)}


def child(kind: str, train_file: Path, out: Path) -> None:
    result = TRAINERS[kind](train_file, out)
    (out / f"{kind}.json").write_text(json.dumps(result))


def run_child(kind: str, train_file: Path, out: Path) -> dict:
    """Run one trainer in a fresh process; returns its result with its own peak RSS."""
    process = subprocess.Popen([sys.executable, __file__, "--child", kind, "--train", str(train_file),
                                "--out", str(out)], stdout=sys.stderr)
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"{kind} run failed with status {status}")
    result = json.loads((out / f"{kind}.json").read_text())
    result["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, default=DEFAULT_TRAIN)
    parser.add_argument("--eval", type=Path, default=DEFAULT_EVAL)
    parser.add_argument("--limit", type=int, default=None, help="Use only the first N training examples.")
    parser.add_argument("--child", choices=list(TRAINERS), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.train, args.out)
        return
    with tempfile.TemporaryDirectory(prefix="hone-bench-") as tmp:
        out = Path(tmp)
        train_file = limited_copy(args.train, args.limit, out)
        from hone.models import local_model_dir

        local_model_dir(MODEL)  # convert the GGUF once, outside both timings
        tokens = dataset_tokens(train_file)
        examples = sum(1 for line in train_file.read_text().splitlines() if line.strip())
        results = {kind: run_child(kind, train_file, out) for kind in TRAINERS}
        for result in results.values():
            result["tokens_per_s"] = round(tokens / result["train_seconds"], 1)
            result["eval_loss"] = round(adapter_eval_loss(result.pop("adapter"), args.eval), 4)
    hone = results["hone"]
    anchor = max(("trl", "trl_defaults"), key=lambda kind: results[kind]["tokens_per_s"])  # the stronger one
    trl = results[anchor]
    print(json.dumps({
        "bench": "train_throughput", "model": MODEL, "train_examples": examples, "dataset_tokens": tokens,
        "config": SHARED, **results,
        "anchor": anchor, "speedup": round(hone["tokens_per_s"] / trl["tokens_per_s"], 2),
        "eval_loss_ratio": round(hone["eval_loss"] / trl["eval_loss"], 4),
    }))


if __name__ == "__main__":
    main()
