"""Training throughput: hone vs TRL's SFTTrainer on the same model, data and LoRA config, in one run.

Every training run goes in its own process (so peak RSS is its own). In order:
1. the bf16 and fp32 matmul peaks of this machine, measured now, for model FLOPs utilisation (MFU);
2. one epoch with TRL's SFTTrainer each way (fp32 without and with gradient checkpointing, which SFTConfig
   turns on by default, and bf16 autocast): the fastest is the anchor;
3. three alternating pairs, one epoch each: hone (every speed switch on), the anchor, hone, the anchor, hone,
   the anchor; the speed-up is the median of the three pairs' ratios, so one noisy run decides nothing. Every
   adapter is scored by the same eval-loss code on the same held-out file;
4. the ablation: hone with one speed switch flipped at a time (and all off), a few steps each;
5. QLoRA and DPO tokens/s.
Prints one JSON line.

With `--device cuda` all of it runs on the first GPU: the peaks are the GPU's, hone computes in bf16, TRL runs
with bf16 autocast on float32 weights and on bf16 weights (fp32 TRL, only slower there, is skipped), and every
run also reports its peak GPU memory. `--model random-1b` trains a ~0.92B-parameter Llama with random weights,
built in the run, instead of SmolLM2-135M.

    python bench/train_throughput.py [--device cpu|cuda] [--model NAME|random-1b] [--train FILE] [--eval FILE]
                                     [--limit N] [--steps N]
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
RANDOM_1B = "random-1b"  # --model: a Llama of TinyLlama's width with random weights, built in the run
SHARED = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear", "max_length": 512,
          "batch_size": 8, "epochs": 1, "lr": 2e-4, "scheduler": "cosine", "warmup_ratio": 0.05, "seed": 42}
# Packed rows of max_length tokens hold ~4 of these ~120-token examples, so 2 rows a step carry about the
# same tokens as 8 padded examples: the same number of optimizer steps over the epoch.
PACKED_BATCH = 2
# precision auto: bf16 frozen weights where the CPU has native bf16 (AVX512-BF16/AMX), else fp32.
# Every speed switch of training (the documented training.* fields), each in the ablation below.
HONE_BEST = {"packing": True, "chunked_loss": True, "precision": "auto", "compile": False,
             "fused_lora_forward": True, "autocast_adapter_inputs": True, "keep_freed_memory": True,
             "fused_optimizer": True, "matmul_attention": True}
ALL_OFF = {"packing": False, "chunked_loss": False, "precision": "fp32", "fused_lora_forward": False,
           "autocast_adapter_inputs": False, "keep_freed_memory": False, "fused_optimizer": False,
           "matmul_attention": False}
ABLATION = {
    "best": {},
    "packing_off": {"packing": False},
    "chunked_loss_off": {"chunked_loss": False},
    "bf16_off": {"precision": "fp32"},
    "fused_lora_forward_off": {"fused_lora_forward": False},
    "autocast_adapter_inputs_off": {"autocast_adapter_inputs": False},
    "keep_freed_memory_off": {"keep_freed_memory": False},
    "fused_optimizer_off": {"fused_optimizer": False},
    "matmul_attention_off": {"matmul_attention": False},
    "compile_on": {"compile": True},
    "all_off": ALL_OFF,
}
PAIRS = 3  # alternating hone / anchor pairs; the speed-up is their median ratio
# Without native bf16 the CPU emulates bf16 matmuls some 50x slower than fp32: those runs would take hours
# and tell nothing, so they are reported as skipped, with both measured peaks.
NEEDS_NATIVE_BF16 = {"bf16_off", "all_off", "autocast_adapter_inputs_off", "trl_bf16"}
# On a GPU fp32 TRL is only slower than bf16 TRL, so the anchor is the faster of the two bf16 ways there.
SLOWER_ON_GPU = {"trl", "trl_defaults"}
WARMUP_STEPS = 3  # left out of the ablation's steady-state tokens/s (compilation happens there)


def limited_copy(path: Path, limit: int | None, folder: Path) -> Path:
    if not limit:
        return path
    target = folder / path.name
    target.write_text("".join(path.read_text().splitlines(keepends=True)[:limit]))
    return target


def hone_settings(switches: dict, method: str = "lora") -> dict:
    """The hone config of the comparison, with its speed switches (and method) set."""
    switches = {**HONE_BEST, **switches}
    batch = PACKED_BATCH if switches["packing"] else SHARED["batch_size"]
    return {"method": method, "batch_size": batch, **switches}


def random_1b(folder: Path, device: str) -> str:
    """A Llama of TinyLlama's width (hidden 2048, 32 heads, 8 KV heads, MLP 5632) with 16 layers, random weights
    saved in bf16 and the bundled model's tokenizer, in `folder`: about 0.92B parameters. Returns the folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hone.models import load_tokenizer

    tokenizer = load_tokenizer(MODEL)
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=2048, intermediate_size=5632, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=2048,
                         tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device):  # initialising 1B weights takes minutes on a CPU, a moment on the GPU
        model = LlamaForCausalLM(config)
    model.to(torch.bfloat16).save_pretrained(folder)
    return str(folder)


def run_hone(train_file: Path, out: Path, name: str, settings: dict, model: str, device: str,
             max_steps: int | None = None) -> dict:
    """hone's own loop on `device`, configured like the TRL run; returns the adapter and the measured figures."""
    from hone.train.config import parse_config
    from hone.train.run import train

    s = SHARED
    method = settings.pop("method")
    training = {"epochs": s["epochs"], "lr": s["lr"], "scheduler": s["scheduler"], "warmup_ratio": s["warmup_ratio"],
                "seed": s["seed"], "log_every": 1, "device": device, **settings}
    if max_steps:
        training["max_steps"] = max_steps
    config = parse_config({
        "base_model": model, "method": method,
        "data": {"train": str(train_file), "max_length": s["max_length"]},
        "lora": {k: s[k] for k in ("r", "alpha", "dropout", "target_modules")},
        "training": training, "tracking": {"enabled": False},
        "replay": None,  # TRL trains on exactly the given examples, so hone does too
        "output_dir": str(out), "run_name": name,
    })
    run_dir = train(config, show_progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"adapter": str(run_dir / "adapter"), "train_seconds": summary["train_seconds"],
            "tokens": summary["tokens"], "tokens_per_s": summary["tokens_per_s"],
            "steady_tokens_per_s": steady_tokens_per_s(steps), "steps": summary["steps"]}


def steady_tokens_per_s(steps: list[dict]) -> float:
    """tokens/s after the first WARMUP_STEPS optimizer steps, from the cumulative figures of metrics.jsonl."""
    if len(steps) <= WARMUP_STEPS:
        return steps[-1]["tokens_per_s"]
    first, last = steps[WARMUP_STEPS - 1], steps[-1]
    seconds = last["tokens"] / last["tokens_per_s"] - first["tokens"] / first["tokens_per_s"]
    return round((last["tokens"] - first["tokens"]) / seconds, 1)


def run_trl(train_file: Path, out: Path, name: str, model: str, device: str, gradient_checkpointing: bool,
            bf16: bool = False, bf16_weights: bool = False) -> dict:
    """TRL's SFTTrainer on prompt/completion pairs (loss on the completion only) on `device`, fp32 or bf16
    autocast, its frozen weights float32 or (`bf16_weights`) bf16.

    SFTConfig turns gradient checkpointing on by default; the bench runs TRL several ways and compares
    hone with the fastest.
    """
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from hone.data.formats import load_chat_examples
    from hone.models import local_model_dir

    s = SHARED
    rows = [{"prompt": e.messages[:-1], "completion": e.messages[-1:]} for e in load_chat_examples(train_file)]
    folder = str(local_model_dir(model))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    # dtype given: transformers' default ("auto") would take the dtype the weights were saved in
    network = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16 if bf16_weights else torch.float32)
    args = SFTConfig(output_dir=str(out / "trl"), per_device_train_batch_size=s["batch_size"],
                     num_train_epochs=s["epochs"], learning_rate=s["lr"], lr_scheduler_type=s["scheduler"],
                     warmup_steps=s["warmup_ratio"], max_length=s["max_length"], seed=s["seed"],
                     logging_steps=10, save_strategy="no", report_to=[], use_cpu=device == "cpu",
                     bf16=bf16,
                     max_grad_norm=1.0, weight_decay=0.0, dataloader_num_workers=0,
                     gradient_checkpointing=gradient_checkpointing)
    lora = LoraConfig(r=s["r"], lora_alpha=s["alpha"], lora_dropout=s["dropout"],
                      target_modules=s["target_modules"], task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=network, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer, peft_config=lora)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    adapter = out / f"{name}-adapter"  # one per run: each is scored after all of them have trained
    trainer.model.save_pretrained(adapter)
    return {"adapter": str(adapter), "train_seconds": seconds,
            "tokens_per_s": round(dataset_tokens(train_file, model) / seconds, 1)}


def dataset_tokens(train_file: Path, model: str) -> int:
    """Tokens of every example with the chat template applied: the work both trainers do."""
    from hone.data.formats import load_chat_examples
    from hone.data.render import count_tokens
    from hone.models import load_tokenizer

    tokenizer = load_tokenizer(model)
    return sum(count_tokens(tokenizer, e.messages) for e in load_chat_examples(train_file))


def adapter_eval_loss(adapter: str, eval_file: Path, model: str, device: str) -> float:
    """Mean cross-entropy per assistant token on the held-out file, the same code for both adapters (float32
    weights, on `device`)."""
    import torch
    from peft import PeftModel

    from hone.data.formats import load_chat_examples
    from hone.data.render import render_chat
    from hone.models import load_model, load_tokenizer
    from hone.train.distributed import Distributed
    from hone.train.loop import eval_loss

    tokenizer = load_tokenizer(model)
    adapted = PeftModel.from_pretrained(load_model(model, device=device), adapter)
    examples = [render_chat(tokenizer, e.messages) for e in load_chat_examples(eval_file)]
    return eval_loss(adapted.get_base_model(), examples, 8, tokenizer.pad_token_id,
                     Distributed(device=torch.device(device)))


def write_preferences(train_file: Path, out: Path) -> Path:
    """Preference pairs from the chat data: the reference reply is preferred over another example's reply."""
    from hone.data.formats import load_chat_examples

    examples = load_chat_examples(train_file)
    lines = [json.dumps({"input": {"messages": e.messages[:-1]},
                         "preferred_output": [e.messages[-1]],
                         "non_preferred_output": [examples[(i + 1) % len(examples)].messages[-1]]})
             for i, e in enumerate(examples)]
    path = out / "preferences.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def finished(device: str) -> None:
    """Wait for the work queued on `device`: GPU kernels run asynchronously, so a timing must wait for their end."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def measure_peaks(device: str) -> dict:
    """Best GFLOP/s of large square matmuls in bf16 and fp32 (on a GPU without TF32, PyTorch's default) on
    `device`, now."""
    import torch

    from hone.models.loading import bf16_is_fast

    peaks = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        if device == "cuda":
            size = 8192  # large enough to keep every streaming multiprocessor of an H100-class GPU busy
        else:
            size = 2048 if dtype == torch.float32 or bf16_is_fast("cpu") else 512  # emulated bf16 is very slow
        a = torch.randn(size, size, dtype=dtype, device=device)
        b = torch.randn(size, size, dtype=dtype, device=device)
        torch.matmul(a, b)  # warm-up
        best = float("inf")
        for _ in range(5):
            finished(device)
            started = time.perf_counter()
            for _ in range(3):
                torch.matmul(a, b)
            finished(device)
            best = min(best, (time.perf_counter() - started) / 3)
        peaks[name] = round(2 * size**3 / best / 1e9, 1)
    return peaks


def flops_per_token(train_file: Path, model: str) -> float:
    """Model FLOPs a LoRA step needs per token, on the data's lengths: the linear layers twice forward (2N)
    and once for input gradients in backward (2N; frozen weights need no weight gradient), causal attention
    (forward and its two backward matmuls), and the lm_head on trained tokens only (forward and backward)."""
    from transformers import AutoConfig

    from hone.data.formats import load_chat_examples
    from hone.data.render import render_chat
    from hone.models import load_tokenizer, local_model_dir

    config = AutoConfig.from_pretrained(str(local_model_dir(model)))
    tokenizer = load_tokenizer(model)
    rendered = [render_chat(tokenizer, e.messages) for e in load_chat_examples(train_file)]
    h, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    kv = h * config.num_key_value_heads // config.num_attention_heads
    linear = layers * (2 * h * h + 2 * h * kv + 3 * h * inter)  # q, o, k, v, gate, up, down
    tokens = sum(len(r) for r in rendered)
    attention = sum(3 * 2 * layers * h * len(r) ** 2 for r in rendered) / tokens  # QK^T and AV, causal half
    head = sum(4 * config.vocab_size * h * r.num_trained for r in rendered) / tokens
    return 4 * linear + attention + head


def child(spec: dict, train_file: Path, out: Path, model: str, device: str) -> None:
    if spec["kind"] == "trl":
        result = run_trl(train_file, out, spec["name"], model, device, spec["gradient_checkpointing"], spec["bf16"],
                         spec.get("bf16_weights", False))
    else:
        data = write_preferences(train_file, out) if spec["settings"]["method"] == "dpo" else train_file
        result = run_hone(data, out, spec["name"], dict(spec["settings"]), model, device, spec.get("max_steps"))
    if device == "cuda":
        import torch

        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    (out / f"{spec['name']}.json").write_text(json.dumps(result))


def run_child(spec: dict, train_file: Path, out: Path, model: str, device: str) -> dict:
    """Run one trainer in a fresh process; returns its result with its own peak RSS (and peak GPU memory)."""
    process = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec), "--train", str(train_file),
                                "--out", str(out), "--model", model, "--device", device], stdout=sys.stderr)
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"{spec['name']} run failed with status {status}")
    result = json.loads((out / f"{spec['name']}.json").read_text())
    result["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
    print(f"{spec['name']}: {result['tokens_per_s']} tokens/s", file=sys.stderr)
    return result


def trl_specs(native_bf16: bool, device: str) -> list[dict]:
    """One epoch each: TRL three ways on a CPU, two on a GPU, to find its fastest."""
    trl = [{"kind": "trl", "name": name, "gradient_checkpointing": checkpointing, "bf16": bf16}
           for name, checkpointing, bf16 in (("trl", False, False), ("trl_defaults", True, False),
                                             ("trl_bf16", False, True))]
    if device == "cuda":
        return [spec for spec in trl if spec["name"] not in SLOWER_ON_GPU] + [
            {"kind": "trl", "name": "trl_bf16_weights", "gradient_checkpointing": False, "bf16": True,
             "bf16_weights": True}]
    return trl if native_bf16 else [spec for spec in trl if spec["name"] not in NEEDS_NATIVE_BF16]


def pair_specs(anchor: dict) -> list[dict]:
    """hone at its best and the anchor, alternating, PAIRS times."""
    return [spec for number in range(1, PAIRS + 1) for spec in (
        {"kind": "hone", "name": f"hone_{number}", "settings": hone_settings({})},
        {**anchor, "name": f"{anchor['name']}_{number}"})]


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def peak_memory(result: dict, prefix: str = "") -> dict:
    """A run's peak RSS and, on a GPU, its peak GPU memory, under keys starting with `prefix`."""
    keys = ["peak_rss_mb", *(["peak_gpu_mb"] if "peak_gpu_mb" in result else [])]
    return {prefix + key: result[key] for key in keys}


def check_device(device: str) -> None:
    """Stop before any work when `device` cannot run this benchmark: CUDA asked for where there is none, or a GPU
    without bf16 (the MFU is against its bf16 peak)."""
    import torch

    from hone.errors import HoneError
    from hone.models.loading import bf16_is_fast, resolve_device

    try:
        resolve_device(device, "--device")
    except HoneError as error:
        raise SystemExit(f"{error.message}: run it on a GPU machine with a CUDA build of torch, or with "
                         "--device cpu") from None
    if device == "cuda" and not bf16_is_fast(device):
        raise SystemExit(f"--device cuda: {torch.cuda.get_device_name()} has no bf16, which this benchmark's MFU "
                         "is measured against")


def ablation_specs(steps: int, native_bf16: bool) -> list[dict]:
    """hone with each switch flipped; where bf16 is not native, fp32 is already the best and all_off only
    turns packing and chunked loss off."""
    flips = dict(ABLATION)
    if not native_bf16:
        flips.pop("bf16_off")
        flips.pop("autocast_adapter_inputs_off")  # only bf16 compute casts the adapters' inputs
        flips["all_off"] = {k: v for k, v in ALL_OFF.items() if k not in ("precision", "autocast_adapter_inputs")}
    specs = [{"kind": "hone", "name": f"ablation_{name}", "settings": hone_settings(switches), "max_steps": steps}
             for name, switches in flips.items()]
    # DPO scores each pair as two whole sequences, so it runs unpacked.
    specs += [{"kind": "hone", "name": method, "settings": hone_settings(switches, method), "max_steps": steps}
              for method, switches in (("qlora", {}), ("dpo", {"packing": False}))]
    return specs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, default=DEFAULT_TRAIN)
    parser.add_argument("--eval", type=Path, default=DEFAULT_EVAL)
    parser.add_argument("--limit", type=int, default=None, help="Use only the first N training examples.")
    parser.add_argument("--steps", type=int, default=15, help="Optimizer steps of each ablation, QLoRA and DPO run.")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="Where every run trains and the matmul peaks are measured (cuda: the first GPU).")
    parser.add_argument("--model", default=MODEL,
                        help=f"The model trained: a hone model name or folder, or {RANDOM_1B} (a ~0.92B-parameter "
                        "Llama with random weights, built in the run). Default: %(default)s.")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child), args.train, args.out, args.model, args.device)
        return
    check_device(args.device)
    with tempfile.TemporaryDirectory(prefix="hone-bench-") as tmp:
        out = Path(tmp)
        train_file = limited_copy(args.train, args.limit, out)
        from hone.models import local_model_dir

        local_model_dir(MODEL)  # convert the GGUF once, outside every timing
        model = random_1b(out / RANDOM_1B, args.device) if args.model == RANDOM_1B else args.model
        from hone.models.loading import bf16_is_fast

        native_bf16 = bf16_is_fast(args.device)
        peaks = measure_peaks(args.device)
        per_token = flops_per_token(train_file, model)
        ways = trl_specs(native_bf16, args.device)
        trl_runs = {spec["name"]: run_child(spec, train_file, out, model, args.device) for spec in ways}
        anchor = max(ways, key=lambda spec: trl_runs[spec["name"]]["tokens_per_s"])
        pairs = {spec["name"]: run_child(spec, train_file, out, model, args.device) for spec in pair_specs(anchor)}
        for result in [*trl_runs.values(), *pairs.values()]:
            result["eval_loss"] = round(adapter_eval_loss(result.pop("adapter"), args.eval, model, args.device), 4)
        runs = {spec["name"]: run_child(spec, train_file, out, model, args.device)
                for spec in ablation_specs(args.steps, native_bf16)}
    hone_runs = [pairs[f"hone_{n}"] for n in range(1, PAIRS + 1)]
    anchor_runs = [pairs[f"{anchor['name']}_{n}"] for n in range(1, PAIRS + 1)]
    ratios = [round(h["tokens_per_s"] / a["tokens_per_s"], 3) for h, a in zip(hone_runs, anchor_runs, strict=True)]
    hone_tokens_per_s = median([h["tokens_per_s"] for h in hone_runs])
    ablation = {name.removeprefix("ablation_"): {"tokens_per_s": r["steady_tokens_per_s"],
                                                 "vs_best": round(r["steady_tokens_per_s"] /
                                                                  runs["ablation_best"]["steady_tokens_per_s"], 3),
                                                 **peak_memory(r)}
                for name, r in runs.items() if name.startswith("ablation_")}
    if args.device == "cuda":
        import torch

        gpu = {"gpu": torch.cuda.get_device_name(0)}
        skipped = sorted(SLOWER_ON_GPU)
    else:
        gpu = {}
        skipped = [] if native_bf16 else sorted(NEEDS_NATIVE_BF16)
    print(json.dumps({
        "bench": "train_throughput", "model": args.model, "device": args.device, **gpu, "config": SHARED,
        "hone_switches": HONE_BEST,
        "packed_batch_size": PACKED_BATCH, "matmul_peak_gflops": peaks, "native_bf16": native_bf16,
        "compute_dtype": "bf16" if native_bf16 else "fp32",
        "skipped": skipped,
        "model_gflops_per_token": round(per_token / 1e9, 3),
        "trl_ways": trl_runs, "anchor": anchor["name"], **pairs,
        "speedup": median(ratios), "pair_ratios": ratios,
        "eval_loss": {"hone": [h["eval_loss"] for h in hone_runs],
                      anchor["name"]: [a["eval_loss"] for a in anchor_runs]},
        "eval_loss_ratio": median([round(h["eval_loss"] / a["eval_loss"], 4)
                                   for h, a in zip(hone_runs, anchor_runs, strict=True)]),
        # Against the peak of the dtype hone computes in here (the bf16 peak means nothing where it is emulated;
        # on a GPU it is always bf16).
        "mfu": round(hone_tokens_per_s * per_token / (peaks["bf16" if native_bf16 else "fp32"] * 1e9), 3),
        "ablation": ablation,
        "qlora_tokens_per_s": runs["qlora"]["steady_tokens_per_s"], **peak_memory(runs["qlora"], "qlora_"),
        "dpo_tokens_per_s": runs["dpo"]["steady_tokens_per_s"], **peak_memory(runs["dpo"], "dpo_"),
    }))


if __name__ == "__main__":
    main()
