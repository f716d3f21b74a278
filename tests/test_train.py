"""Training on the tiny model: config validation, loss on assistant tokens only, resume exactness."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from hone.cli import app
from hone.errors import HoneError
from hone.train.batching import epoch_batches
from hone.train.config import load_config, parse_config
from hone.train.run import train

ANIMALS = ["cat", "dog", "fox", "owl", "bee", "eel", "ant", "yak"]


def write_chat_jsonl(path: Path, count: int) -> Path:
    lines = []
    for i in range(count):
        animal = ANIMALS[i % len(ANIMALS)]
        lines.append(json.dumps({"messages": [
            {"role": "user", "content": f"which animal is number {i}?" + " please" * (i % 5)},
            {"role": "assistant", "content": f'{{"animal": "{animal}"}}'},
        ]}))
    path.write_text("\n".join(lines) + "\n")
    return path


def make_config(tmp_path: Path, model_dir: Path, **training) -> Path:
    write_chat_jsonl(tmp_path / "train.jsonl", 24)
    write_chat_jsonl(tmp_path / "eval.jsonl", 6)
    settings = {"batch_size": 4, "lr": 5e-3, "epochs": 2, "eval_every": 3, "log_every": 1, **training}
    config = {
        "base_model": str(model_dir),
        "data": {"train": "train.jsonl", "eval": "eval.jsonl", "max_length": 256},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
        "training": settings,
        "output_dir": str(tmp_path / "runs"),
        "tracking": {"enabled": False},  # one test turns it on; a new MLflow store costs ~3 s
        "replay": "none",  # tested in test_train_replay.py; the tiny model's answers never end, so adds only time
    }
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_unknown_key_suggests_the_right_one(tmp_path, tiny_model_dir):
    path = make_config(tmp_path, tiny_model_dir)
    with pytest.raises(HoneError, match=r"training.learning_rate: unknown key; did you mean 'lr'"):
        load_config(path, ["training.learning_rate=1e-4"])
    with pytest.raises(HoneError, match=r"lora.rank: unknown key; did you mean 'r'"):
        load_config(path, ["lora.rank=8"])


def test_bad_value_names_the_setting(tmp_path, tiny_model_dir):
    with pytest.raises(HoneError, match=r"training.batch_size"):
        load_config(make_config(tmp_path, tiny_model_dir), ["training.batch_size=0"])
    with pytest.raises(HoneError, match=r"data: Field required"):
        parse_config({"base_model": "x"})


def test_early_stopping_needs_an_eval_set_which_a_dataset_folder_brings(tmp_path):
    folder = tmp_path / "configs" / "dataset"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text("{}")
    config = tmp_path / "configs" / "train.yaml"
    config.write_text("data:\n  train: dataset\ntraining:\n  early_stopping_patience: 2\n")
    assert load_config(config).data.train == folder.resolve()  # relative to the config, before validation
    with pytest.raises(HoneError, match="early_stopping_patience needs data.eval"):
        load_config(config, ["data.train=plain.jsonl"])


def test_batches_are_grouped_by_length_and_deterministic():
    lengths = [5, 100, 6, 98, 7, 97, 8, 99] * 4
    first = epoch_batches(lengths, 4, seed=1, epoch=0, group_by_length=True)
    assert first == epoch_batches(lengths, 4, seed=1, epoch=0, group_by_length=True)
    assert first != epoch_batches(lengths, 4, seed=1, epoch=1, group_by_length=True)
    assert sorted(i for batch in first for i in batch) == list(range(len(lengths)))
    for batch in first:
        spread = max(lengths[i] for i in batch) - min(lengths[i] for i in batch)
        assert spread <= 3


def test_training_writes_the_run_directory_and_lowers_loss(tmp_path, tiny_model_dir):
    run_dir = train(load_config(make_config(tmp_path, tiny_model_dir), ["tracking.enabled=true"]),
                    show_progress=False)
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 13))
    assert {"step", "epoch", "train_loss", "lr", "tokens", "tokens_per_s"} <= set(records[0])
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    assert len(evals) == 4 and evals[-1] < evals[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 12 and len(summary["dataset_fingerprint"]) == 64
    assert len(summary["base_model_fingerprint"]) == 64
    assert summary["device"].startswith("cpu (")  # the technical documentation names the compute used
    assert list((run_dir / "checkpoints").glob("step-*"))

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    PeftModel.from_pretrained(base, str(run_dir / "adapter"))

    from hone.train.tracking import mlflow_client

    tracked = json.loads((run_dir / "tracking.json").read_text())
    assert summary["mlflow_run_id"] == tracked["run_id"] and tracked["uri"].endswith("mlflow/mlflow.db")
    client = mlflow_client(tracked["uri"])
    run = client.get_run(tracked["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["training.lr"] == "0.005"
    assert run.data.tags["dataset_fingerprint"] == summary["dataset_fingerprint"]
    assert run.data.tags["base_model_fingerprint"] == summary["base_model_fingerprint"]
    losses = client.get_metric_history(tracked["run_id"], "train_loss")
    assert [m.step for m in losses] == list(range(1, 13))
    assert [m.value for m in losses] == [r["train_loss"] for r in records]
    assert {"adapter/adapter_model.safetensors", "adapter/adapter_config.json"} <= {
        f.path for f in client.list_artifacts(tracked["run_id"], "adapter")}


def test_prompt_tokens_do_not_change_the_loss(tiny_model_dir):
    from hone.data.render import render_chat
    from hone.models import load_model, load_tokenizer
    from hone.train.batching import collate
    from hone.train.loss import trained_token_loss

    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir))
    reply = {"role": "assistant", "content": "dog"}
    a = render_chat(tokenizer, [{"role": "user", "content": "hello"}, reply])
    loss, n = trained_token_loss(model, collate([a], tokenizer.pad_token_id))
    logits = model(input_ids=torch.tensor([a.input_ids])).logits[0, :-1]
    targets = torch.tensor(a.input_ids[1:])
    mask = torch.tensor(a.trained[1:])
    expected = torch.nn.functional.cross_entropy(logits[mask], targets[mask], reduction="sum")
    assert n == int(mask.sum()) and torch.allclose(loss, expected, atol=1e-4)


def resume_after_checkpoint(finished: Path, killed: Path, kept: int) -> Path:
    """Recreate on disk a run killed right after its `kept`-th checkpoint, then resume it."""
    shutil.copytree(finished, killed)
    for later in sorted((killed / "checkpoints").glob("step-*"))[kept:]:
        shutil.rmtree(later)
    shutil.rmtree(killed / "adapter")
    return train(None, resume_dir=killed, show_progress=False)


def assert_same_trainable_weights(a: Path, b: Path, step: int) -> None:
    name = f"step-{step:07d}"
    final_a = load_file(str(a / "checkpoints" / name / "trainable.safetensors"))
    final_b = load_file(str(b / "checkpoints" / name / "trainable.safetensors"))
    assert final_a.keys() == final_b.keys()
    for key in final_a:
        assert torch.equal(final_a[key], final_b[key]), key


def test_resume_continues_exactly(tmp_path, tiny_model_dir):
    config = load_config(make_config(tmp_path, tiny_model_dir, save_every=2, save_total_limit=20))
    straight = train(config, show_progress=False)
    resumed = resume_after_checkpoint(straight, tmp_path / "killed", kept=2)  # killed after step 4
    assert_same_trainable_weights(straight, resumed, step=12)
    a = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in b] == list(range(1, 13))
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]


def test_cli_dry_run_marks_trained_tokens(tmp_path, tiny_model_dir):
    result = CliRunner().invoke(app, ["train", str(make_config(tmp_path, tiny_model_dir)), "--dry-run",
                                      "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    trained = "".join(text for text, flag in report["example"]["segments"] if flag)
    assert trained.startswith('{"animal": "') and trained.endswith("<|im_end|>\n")
    assert report["estimate"]["seconds_per_epoch"] > 0
    assert report["examples"]["train"] == 24


def test_dora_trains_an_adapter_that_peft_loads_and_eval_uses(tmp_path, tiny_model_dir):
    from peft import PeftModel

    from hone.eval import evaluate
    from hone.models import load_model

    config = load_config(make_config(tmp_path, tiny_model_dir, max_steps=4), ["method=dora"])
    run_dir = train(config, show_progress=False)
    adapter = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["use_dora"] is True
    weights = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert any("lora_magnitude_vector" in name for name in weights)
    PeftModel.from_pretrained(load_model(str(tiny_model_dir)), str(run_dir / "adapter"))
    report = evaluate(adapter=run_dir, data=tmp_path / "eval.jsonl", out=tmp_path / "eval", max_new_tokens=4,
                      forgetting={"enabled": False}, show_progress=False)
    assert report["aggregates"]["fine-tuned"]["output_tokens"] is not None


def test_resume_after_kill_9_mid_epoch_matches_an_uninterrupted_run(tmp_path, tiny_model_dir):
    import os
    import signal
    import subprocess
    import sys
    import time

    path = make_config(tmp_path, tiny_model_dir, batch_size=2, epochs=1, eval_every=None, save_every=5,
                       save_total_limit=50)
    write_chat_jsonl(tmp_path / "train.jsonl", 240)  # 120 steps: long enough to be killed mid-epoch
    straight = train(load_config(path), show_progress=False)

    runs = tmp_path / "killed-runs"
    command = [sys.executable, "-m", "hone", "train", str(path), "--set", f"output_dir={runs}"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ)
    deadline = time.monotonic() + 120
    while not list(runs.glob("*/checkpoints/step-0000020")) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    [killed] = list(runs.iterdir())
    assert not (killed / "adapter" / "adapter_model.safetensors").exists(), "the run finished before the kill"

    resumed = subprocess.run([sys.executable, "-m", "hone", "train", "--resume", str(killed)], capture_output=True,
                             text=True, env=os.environ)
    assert resumed.returncode == 0, resumed.stderr
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 121))  # nothing logged twice, nothing missing
    a = [json.loads(line)["train_loss"] for line in (straight / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(line)["train_loss"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert a == b  # same data order and same updates
    final_a = load_file(str(straight / "adapter" / "adapter_model.safetensors"))
    final_b = load_file(str(killed / "adapter" / "adapter_model.safetensors"))
    assert all(torch.equal(final_a[name], final_b[name]) for name in final_a)


def test_memory_estimate_counts_the_real_trainable_parameters_and_warns_before_a_run_that_will_not_fit(
        tmp_path, tiny_model_dir, monkeypatch, capsys):
    from hone.train import memory
    from hone.train.run import build_lora_model

    config = load_config(make_config(tmp_path, tiny_model_dir, max_steps=1))
    small = memory.estimate_memory(config, torch.float32, 100)
    real = build_lora_model(config, torch.float32)
    assert small["trainable_parameters"] == sum(p.numel() for p in real.parameters() if p.requires_grad)
    assert small["bytes"]["frozen_weights"] == sum(p.numel() * 4 for p in real.parameters() if not p.requires_grad)
    large = memory.estimate_memory(config, torch.float32, 1000)
    assert large["bytes"]["activations"] == 10 * small["bytes"]["activations"]
    scored = memory.estimate_memory(config, torch.float32, 100, scores_length=50)  # packed attention on a CPU
    heads, layers = real.config.num_attention_heads, real.config.num_hidden_layers
    assert scored["bytes"]["activations"] - small["bytes"]["activations"] == 100 * layers * heads * 50 * 4

    result = CliRunner().invoke(app, ["train", str(tmp_path / "config.yaml"), "--dry-run", "--no-estimate",
                                      "--json"])
    plan = json.loads(result.stdout)["memory"]
    assert plan["total_gib"] > 0 and plan["warning"] is None  # a tiny model fits

    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": 1024)
    train(config, show_progress=False)
    assert "warning: this run needs about" in capsys.readouterr().err
    assert "lower training.batch_size" in memory.fit_warning(small, 1024)


def test_packed_training_learns_and_counts_steps_in_packed_rows(tmp_path, tiny_model_dir):
    import math

    path = make_config(tmp_path, tiny_model_dir, packing=True, batch_size=2, epochs=3, eval_every=2)
    plan = json.loads(CliRunner().invoke(app, ["train", str(path), "--dry-run", "--no-estimate", "--json"]).stdout)
    config = load_config(path)
    run_dir = train(config, show_progress=False)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = plan["packing"]["rows"]
    assert rows < 24 / 2 and plan["packing"]["efficiency"] > 0.8  # 24 short chats fit in a few rows
    assert len(records) == plan["optimizer_steps"] == math.ceil(3 * math.ceil(rows / 2))
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    assert evals[-1] < evals[0]
