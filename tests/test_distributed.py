"""Several training processes (2 on gloo, CPU) give the run one process gives with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train import make_config, write_chat_jsonl
from typer.testing import CliRunner

from hone.cli import app
from hone.errors import HoneError
from hone.train.config import load_config
from hone.train.distributed import shard_frozen_weights
from hone.train.run import train

# Two processes sum the same numbers in another order (and pad their halves of a batch differently), so in
# float32 the figures agree to rounding, not bit for bit. Measured: train and eval loss within 3e-7 relative,
# adapter weights within 7e-5 of each tensor's largest entry (Adam magnifies rounding in near-zero gradients).
LOSS_RTOL = 1e-5
WEIGHT_TOL = 1e-3  # of the tensor's largest absolute entry

# fp32: bf16 would round each process's differently shaped matmuls differently. No dropout: each process draws
# its own masks. 25 examples (and 5 eval examples) in batches of 4: the last micro-batch leaves process 1 idle.
SETTINGS = ["training.precision=fp32", "lora.dropout=0", "training.grad_accum=2", "training.save_every=2",
            "training.save_total_limit=20"]


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def hone_train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hone", "train", *args], capture_output=True, text=True,
                          env=os.environ, timeout=300)


def assert_same_run(single: Path, multi: Path) -> None:
    a, b = records(single), records(multi)
    assert [r["step"] for r in b] == [r["step"] for r in a]  # rank 0 alone logs, each step once
    assert [r["tokens"] for r in b] == [r["tokens"] for r in a]  # token counts are global
    assert [r["train_loss"] for r in b] == pytest.approx([r["train_loss"] for r in a], rel=LOSS_RTOL)
    evals = [r["eval_loss"] for r in a if "eval_loss" in r]
    assert len(evals) >= 2 and [r["eval_loss"] for r in b if "eval_loss" in r] == pytest.approx(evals, rel=LOSS_RTOL)
    weights = Path("adapter") / "adapter_model.safetensors"
    assert_close_weights(single / weights, multi / weights)


def assert_close_weights(a: Path, b: Path) -> None:
    first, second = load_file(str(a)), load_file(str(b))
    assert first.keys() == second.keys()
    for name, value in first.items():
        scale = float(value.abs().max())
        assert float((value - second[name]).abs().max()) <= WEIGHT_TOL * scale, name


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    """One config trained in one process (in this test process) and in two (`hone train --nproc 2`)."""
    folder = tmp_path_factory.mktemp("distributed")
    path = make_config(folder, tiny_model_dir, epochs=2, eval_every=2)
    write_chat_jsonl(folder / "train.jsonl", 25)
    write_chat_jsonl(folder / "eval.jsonl", 5)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HONE_HOME", str(folder / "hone-home"))  # module-scoped: outside the per-test homes
        single = train(load_config(path, [*SETTINGS, f"output_dir={folder / 'single'}"]), show_progress=False)
        launched = hone_train(str(path), "--nproc", "2", *(f"--set={item}" for item in SETTINGS),
                              f"--set=output_dir={folder / 'multi'}")
    return {"config": path, "single": single, "launched": launched, "multi_dir": folder / "multi"}


def test_two_processes_train_the_same_run_as_one(runs):
    launched = runs["launched"]
    assert launched.returncode == 0, launched.stderr
    [multi] = list(runs["multi_dir"].iterdir())  # one run directory, shared by both processes
    assert launched.stdout.strip().splitlines()[-1] == str(multi)  # printed once, by rank 0
    assert launched.stdout.count("trained ") == 1
    assert_same_run(runs["single"], multi)
    summary = json.loads((multi / "summary.json").read_text())
    assert summary["tokens"] == json.loads((runs["single"] / "summary.json").read_text())["tokens"]


def test_a_two_process_run_resumed_under_fsdp_finishes_the_same_run(runs, tmp_path, monkeypatch):
    [multi] = list(runs["multi_dir"].iterdir())
    killed = tmp_path / "killed"
    shutil.copytree(multi, killed)
    for later in sorted((killed / "checkpoints").glob("step-*"))[1:]:  # as if killed after step 2
        shutil.rmtree(later)
    shutil.rmtree(killed / "adapter")
    # The same run with the frozen base sharded: FSDP must keep an idle process in step (25 examples in 4s).
    config = killed / "config.yaml"
    config.write_text(config.read_text().replace("distributed: ddp", "distributed: fsdp"))
    assert "distributed: fsdp" in config.read_text()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the launcher runs in this process and would set it for good
    result = CliRunner().invoke(app, ["train", "--resume", str(killed), "--nproc", "2"])
    assert result.exit_code == 0, result.output
    assert_same_run(multi, killed)
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["steps"] == json.loads((multi / "summary.json").read_text())["steps"]


def test_each_process_needs_a_share_of_every_micro_batch(tmp_path, tiny_model_dir):
    path = make_config(tmp_path, tiny_model_dir, batch_size=2)
    result = CliRunner().invoke(app, ["train", str(path), "--nproc", "3"])
    assert result.exit_code != 0 and isinstance(result.exception, HoneError)
    assert "training.batch_size is 2, fewer than the 3 processes" in str(result.exception)
    assert not (tmp_path / "runs").exists()  # refused before any process started
    with pytest.raises(HoneError, match="fsdp does not support method qlora"):
        shard_frozen_weights(torch.nn.Linear(2, 2), set(), "qlora")
