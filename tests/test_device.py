"""Device-aware planning and precision, tested on the CPU: the device settings are checked (CUDA asked for where
there is none is an error naming the setting), a run that cannot fit on a GPU is refused before loading with the
estimate, the free memory and what to lower (FSDP when the weights alone are too big), precision auto picks fp16
on a GPU without bf16, and the fp16 path (autocast + loss scaling, its scale checkpointed) trains and resumes
exactly. The GPU itself is exercised by `make gpu-check`."""

from __future__ import annotations

import json

import pytest
import torch
from test_train import assert_same_trainable_weights, make_config, resume_after_checkpoint
from typer.testing import CliRunner

from hone.cli import app
from hone.errors import HoneError
from hone.models import loading
from hone.models.loading import check_precision, frozen_dtype, resolve_device
from hone.train import memory
from hone.train.config import load_config
from hone.train.distributed import training_device
from hone.train.run import train

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answers of a machine without CUDA")


def test_device_settings_are_checked_and_name_the_setting():
    assert resolve_device("auto", "device") == "cpu" and resolve_device("cpu", "device") == "cpu"
    with pytest.raises(HoneError, match="training.device is 'cuda' but this machine has no CUDA GPU") as found:
        resolve_device("cuda", "training.device")
    assert "set training.device to auto or cpu" in found.value.hint
    with pytest.raises(HoneError, match="device is 'gpu0': expected auto, cpu, cuda or cuda:N"):
        resolve_device("gpu0", "device")
    with pytest.raises(HoneError, match="each takes its own GPU"):
        training_device("cuda:1", local_rank=0, world_size=2)


def test_cuda_asked_for_where_there_is_none_stops_training_and_serving_before_loading(tmp_path, tiny_model_dir):
    config = make_config(tmp_path, tiny_model_dir)
    run = CliRunner().invoke(app, ["train", str(config), "--set", "training.device=cuda"])
    assert run.exit_code != 0 and "training.device is 'cuda'" in str(run.exception)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # no run directory left

    from hone.serve.config import ServeConfig
    from hone.serve.server import ModelServer

    with pytest.raises(HoneError, match="device is 'cuda:0' but this machine has no CUDA GPU"):
        ModelServer(ServeConfig(base=str(tiny_model_dir), device="cuda:0"))


def test_precision_auto_is_fp16_on_a_gpu_without_bf16_and_bf16_there_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(loading, "bf16_is_fast", lambda device="cpu": False)  # e.g. a T4 or V100
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    assert frozen_dtype("cuda:0") == torch.float16 and frozen_dtype("cuda:0", "fp32") == torch.float32
    with pytest.raises(HoneError, match="training.precision is bf16 but Tesla T4 does not support bf16"):
        check_precision("cuda:0", "bf16")
    check_precision("cuda:0", "fp16")
    monkeypatch.setattr(loading, "bf16_is_fast", lambda device="cpu": True)  # an A100 or H100
    assert frozen_dtype("cuda:0") == torch.bfloat16


def test_a_run_that_cannot_fit_on_the_gpu_is_refused_with_the_estimate_the_free_memory_and_what_to_lower(
        tmp_path, tiny_model_dir, monkeypatch):
    config = load_config(make_config(tmp_path, tiny_model_dir, batch_size=4))
    plan = memory.memory_plan(config, 200, "cuda:0")  # the weights in the dtype a GPU without bf16 gets here
    gib = memory.GIB
    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": int(plan["total_bytes"] * 0.9))
    tight = memory.memory_plan(config, 200, "cuda:0")
    with pytest.raises(HoneError) as refused:
        memory.refuse_if_it_cannot_fit(tight)
    message = str(refused.value)
    assert message.startswith(f"the run does not fit on cuda:0: this run needs about {plan['total_gib']:.1f} GiB")
    assert f"only {plan['total_bytes'] * 0.9 / gib:.1f} GiB is free" in message
    assert "lower training.batch_size" in message
    memory.refuse_if_it_cannot_fit(memory.memory_plan(config, 200, "cpu"))  # the CPU only warns (it may swap)

    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": plan["bytes"]["frozen_weights"] // 2)
    with pytest.raises(HoneError, match="training.distributed: fsdp and --nproc N"):
        memory.refuse_if_it_cannot_fit(memory.memory_plan(config, 200, "cuda:0"))
    sharded = config.model_copy(update={"training": config.training.model_copy(update={"distributed": "fsdp"})})
    four = memory.memory_plan(sharded, 200, "cuda:0", world_size=4)
    assert four["bytes"]["frozen_weights"] == plan["bytes"]["frozen_weights"] // 4  # each GPU holds a quarter
    assert four["bytes"]["activations"] == plan["bytes"]["activations"] // 4  # and a quarter of each micro-batch


def test_fp16_with_loss_scaling_trains_checkpoints_its_scale_and_resumes_exactly(tmp_path, tiny_model_dir):
    config = load_config(make_config(tmp_path, tiny_model_dir, precision="fp16", save_every=2, save_total_limit=20))
    straight = train(config, show_progress=False)
    records = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    assert evals[-1] < evals[0]  # it learns under fp16 autocast with a scaled loss
    state = torch.load(straight / "checkpoints" / "step-0000004" / "optim.pt", weights_only=False)
    assert state["scaler"]["scale"] > 0 and {"growth_factor", "backoff_factor"} <= state["scaler"].keys()
    resumed = resume_after_checkpoint(straight, tmp_path / "killed", kept=2)  # killed after step 4
    assert_same_trainable_weights(straight, resumed, step=12)
