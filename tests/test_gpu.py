"""On a CUDA GPU, through the code paths the CPU tests use: every training method on the bundled SmolLM2 and on a
~1B-parameter Llama, a run killed with -9 and resumed, two adapters and the base served in one batch, and export.

Skipped without CUDA and left out of `make test`; `make gpu-check` runs them (and appends figures as JSON lines to
$HONE_GPU_RESULTS when it is set).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import openai
import pytest
import torch
from conftest import serve_app, shared_home
from safetensors.torch import load_file
from test_serve import health, make_adapter
from test_train import make_config, write_chat_jsonl
from test_train_methods import dpo_config
from typer.testing import CliRunner

from hone.api.app import create_app
from hone.cli import app
from hone.data.render import render_prompt
from hone.models import load_model, load_tokenizer
from hone.models.finetuned import attach_adapter, load_for_inference
from hone.models.generation import stop_token_ids
from hone.serve.config import ServeConfig
from hone.train.config import load_config
from hone.train.run import train

DEVICE = "cuda"
MODEL = "smollm2-135m-instruct"
METHODS = ["lora", "dora", "qlora", "full", "dpo"]
# Full fine-tuning moves every weight: at the adapters' learning rate it would overshoot in a few steps.
LEARNING_RATES = {"lora": 5e-3, "dora": 5e-3, "qlora": 5e-3, "full": 1e-4, "dpo": 5e-3}

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is "
                       "False): run `make gpu-check` on a machine with an NVIDIA GPU"),
]


def record(figures: dict) -> None:
    """Append one JSON line of figures to $HONE_GPU_RESULTS, so `make gpu-check` reports what the tests measured."""
    path = os.environ.get("HONE_GPU_RESULTS")
    if path:
        with open(path, "a") as out:
            out.write(json.dumps({"check": "test_gpu", **figures}) + "\n")


def llama_1b_config(tokenizer):
    """A Llama of TinyLlama's width (hidden 2048, 32 heads, 8 KV heads, MLP 5632) with 16 layers and the bundled
    tokenizer's vocabulary: about 0.92B parameters."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=2048, intermediate_size=5632, num_hidden_layers=16,
                       num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=2048,
                       tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


@pytest.fixture(scope="session")
def llama_1b_dir(tmp_path_factory) -> Path:
    """The ~1B Llama with random weights (saved in bf16) and the bundled model's tokenizer, in a model folder."""
    from transformers import LlamaForCausalLM

    folder = tmp_path_factory.mktemp("llama-1b")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HONE_HOME", str(shared_home()))
        tokenizer = load_tokenizer(MODEL)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    with torch.device(DEVICE):  # initialising 1B weights takes minutes on a CPU, a moment on the GPU
        model = LlamaForCausalLM(llama_1b_config(tokenizer))
    model.to(torch.bfloat16).save_pretrained(folder)
    return folder


def records_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@torch.inference_mode()
def chat_loss(model, tokenizer, path: Path) -> float:
    """Mean next-token loss over the whole of each conversation in a chat file."""
    losses = []
    for line in path.read_text().splitlines():
        inputs = tokenizer.apply_chat_template(json.loads(line)["messages"], return_tensors="pt",
                                               return_dict=True).to(DEVICE)
        losses.append(model(**inputs, labels=inputs["input_ids"]).loss.item())
    return sum(losses) / len(losses)


@torch.inference_mode()
def preference_margin(model, tokenizer, path: Path) -> float:
    """Mean log-likelihood of the preferred reply minus the rejected one, over a preference file."""
    def log_likelihood(messages: list[dict]) -> float:
        inputs = tokenizer.apply_chat_template(messages, return_tensors="pt", return_dict=True).to(DEVICE)
        # loss is the mean over the sequence's predicted tokens; times their count gives the summed NLL
        return -model(**inputs, labels=inputs["input_ids"]).loss.item() * (inputs["input_ids"].shape[1] - 1)

    margins = []
    for line in path.read_text().splitlines():
        pair = json.loads(line)
        prompt = pair["input"]["messages"]
        margins.append(log_likelihood(prompt + pair["preferred_output"])
                       - log_likelihood(prompt + pair["non_preferred_output"]))
    return sum(margins) / len(margins)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("base", ["smollm2", "llama-1b"])
def test_every_method_trains_on_the_gpu_and_its_weights_load(base, method, request, tmp_path, shared_model_cache):
    from peft import PeftModel

    base_model = MODEL if base == "smollm2" else str(request.getfixturevalue("llama_1b_dir"))
    # 5 steps of 6 per epoch: no epoch-end checkpoint, which for a full 1B run would write 15 GB of Adam state
    settings = {"max_steps": 5, "eval_every": 2, "lr": LEARNING_RATES[method]}
    if method == "dpo":
        path = dpo_config(tmp_path, base_model, **settings)
    else:
        path = make_config(tmp_path, base_model, **settings)
    torch.cuda.reset_peak_memory_stats()
    run_dir = train(load_config(path, [f"method={method}"]), show_progress=False)

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["device"].startswith(f"{DEVICE} (")  # trained on the GPU, not quietly on the CPU
    records = records_of(run_dir)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    assert len(evals) == 3 and evals[-1] < evals[0] and evals[-1] < records[0]["train_loss"]
    record({"test": "train", "base": base, "method": method, "tokens_per_s": summary["tokens_per_s"],
            "train_seconds": summary["train_seconds"], "final_eval_loss": evals[-1],
            "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)})

    tokenizer = load_tokenizer(base_model)
    if method == "full":
        trained, _, _ = load_for_inference(run_dir, dtype=torch.bfloat16, device=DEVICE)
        untrained = load_model(base_model, dtype=torch.bfloat16, device=DEVICE)
        assert chat_loss(trained, tokenizer, tmp_path / "eval.jsonl") < chat_loss(untrained, tokenizer,
                                                                                    tmp_path / "eval.jsonl")
        return
    adapter_config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["use_dora"] is (method == "dora")
    # Every method's adapter loads with plain PEFT on the full-precision base (qlora's too) and does what it learnt.
    model = PeftModel.from_pretrained(load_model(base_model, dtype=torch.bfloat16, device=DEVICE),
                                      str(run_dir / "adapter")).eval()
    if method == "dpo":
        adapted = preference_margin(model, tokenizer, tmp_path / "prefs_eval.jsonl")
        with model.disable_adapter():
            assert adapted > preference_margin(model, tokenizer, tmp_path / "prefs_eval.jsonl")
    else:
        adapted = chat_loss(model, tokenizer, tmp_path / "eval.jsonl")
        with model.disable_adapter():
            assert adapted < chat_loss(model, tokenizer, tmp_path / "eval.jsonl")


def test_a_run_killed_mid_epoch_resumes_like_an_uninterrupted_one(tmp_path, shared_model_cache):
    path = make_config(tmp_path, MODEL, batch_size=4, epochs=1, eval_every=None, save_every=5, save_total_limit=50,
                       lr=2e-3)
    write_chat_jsonl(tmp_path / "train.jsonl", 480)  # 120 steps: long enough on a GPU to be killed mid-epoch
    straight = train(load_config(path), show_progress=False)

    runs = tmp_path / "killed-runs"
    command = [sys.executable, "-m", "hone", "train", str(path), "--set", f"output_dir={runs}"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ)
    deadline = time.monotonic() + 300
    while not list(runs.glob("*/checkpoints/step-0000020")) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    [killed] = list(runs.iterdir())
    assert not (killed / "adapter" / "adapter_model.safetensors").exists(), "the run finished before the kill"

    resumed = subprocess.run([sys.executable, "-m", "hone", "train", "--resume", str(killed)], capture_output=True,
                             text=True, env=os.environ)
    assert resumed.returncode == 0, resumed.stderr
    assert [r["step"] for r in records_of(killed)] == list(range(1, 121))  # nothing logged twice, nothing missing
    # GPU kernels (bf16 matmuls, atomic adds in attention's backward) do not repeat bit for bit: close, not equal.
    assert [r["train_loss"] for r in records_of(killed)] == pytest.approx(
        [r["train_loss"] for r in records_of(straight)], rel=0.02)
    final_a = load_file(str(straight / "adapter" / "adapter_model.safetensors"))
    final_b = load_file(str(killed / "adapter" / "adapter_model.safetensors"))
    assert final_a.keys() == final_b.keys()
    for name, weight in final_a.items():
        assert (final_b[name] - weight).norm() <= 0.05 * weight.norm(), name


QUESTIONS = ["What is the capital of France?", "Write one sentence about the sea."]
MAX_TOKENS = 16


def test_two_adapters_and_the_base_in_one_batch_answer_like_generate_on_each(tmp_path, shared_model_cache):
    runs = {name: make_adapter(tmp_path / name, MODEL, seed) for seed, name in enumerate(["legal", "support"], 1)}
    jobs = [(name, question) for question in QUESTIONS for name in [MODEL, *runs]]
    # fp32 on both sides, so batching is the only difference between the server and `generate`
    settings = ServeConfig(base=MODEL, adapters=runs, dtype="fp32", device=DEVICE, max_batch=8,
                           database=f"sqlite:///{tmp_path / 'hone.db'}")

    async def together(url: str) -> list[str]:
        sdk = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0)
        replies = await asyncio.gather(*[
            sdk.chat.completions.create(model=name, messages=[{"role": "user", "content": question}],
                                        max_tokens=MAX_TOKENS, temperature=0) for name, question in jobs])
        return [reply.choices[0].message.content for reply in replies]

    with serve_app(create_app(settings)) as url:
        steps_before = health(url)["steps"]
        served = asyncio.run(together(url))
        shared_steps = health(url)["steps"] - steps_before
    assert shared_steps < len(jobs) * MAX_TOKENS  # the six requests were decoded together

    tokenizer = load_tokenizer(MODEL)
    model = load_model(MODEL, dtype=torch.float32, device=DEVICE)
    for name, run in runs.items():
        model = attach_adapter(model, run / "adapter", MODEL, name=name)
    model.eval()
    stops = list(stop_token_ids(tokenizer, model.generation_config))
    expected = []
    for name, question in jobs:
        if name != MODEL:
            model.set_adapter(name)
        ids = torch.tensor([render_prompt(tokenizer, [{"role": "user", "content": question}])], device=DEVICE)
        with torch.inference_mode(), model.disable_adapter() if name == MODEL else nullcontext():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=MAX_TOKENS, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
        expected.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    groups = [expected[start:start + len(runs) + 1] for start in range(0, len(jobs), len(runs) + 1)]
    assert all(len(set(group)) == len(group) for group in groups)  # each adapter changes the reply: the check can fail
    assert served == expected


def test_a_gpu_trained_adapter_exports_to_files_transformers_loads(tmp_path, shared_model_cache):
    from transformers import AutoModelForCausalLM

    run_dir = train(load_config(make_config(tmp_path, MODEL, max_steps=4, eval_every=None)), show_progress=False)
    out = tmp_path / "merged"
    result = CliRunner().invoke(app, ["export", str(run_dir), "--merge", "--gguf", "--dtype", "fp32", "--out",
                                      str(out), "--json"])
    assert result.exit_code == 0, result.output
    exported = json.loads(result.stdout)

    reference, tokenizer, _ = load_for_inference(run_dir, dtype=torch.float32, device=DEVICE)
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": QUESTIONS[0]}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True).to(DEVICE)
    base = load_model(MODEL, dtype=torch.float32, device=DEVICE).eval()
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).to(DEVICE).eval()
    gguf = out / exported["gguf"]
    from_gguf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    with torch.inference_mode():
        expected = reference(**inputs).logits
        assert (base(**inputs).logits - expected).abs().max() > 1e-2  # the trained adapter matters: can fail
        torch.testing.assert_close(merged(**inputs).logits, expected, atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(from_gguf.to(DEVICE).eval()(**inputs).logits, expected, atol=1e-3, rtol=1e-3)


def test_hone_eval_runs_on_the_gpu_with_perplexity_and_forgetting(tmp_path, shared_model_cache):
    from hone.eval.run import evaluate

    run_dir = train(load_config(make_config(tmp_path, MODEL, max_steps=4, eval_every=None)), show_progress=False)
    report = evaluate(device=DEVICE, show_progress=False, base=MODEL, adapter=run_dir, data=tmp_path / "eval.jsonl",
                      out=tmp_path / "eval-report", forgetting={"enabled": True, "limit": 8})
    assert report["config"]["device"] == DEVICE
    for name in ("base", "fine-tuned"):  # scored on the GPU: the batches go where the model is
        assert report["aggregates"][name]["perplexity"] > 1
    assert report["forgetting"] is not None and not report["failures"]
    record({"eval": "smollm2 base vs fine-tuned", "total_s": report["timings"]["total_s"]})
