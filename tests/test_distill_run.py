"""`hone distill run` end to end on the tiny model: a real `hone serve` whose adapter was trained in the test is the
teacher; it labels prompts, the answers become a dataset version with lineage on every row, a fine-tuning job trains
the student, and teacher, student and base are evaluated with CIs into quality kept, cost and a verdict. A rerun
asks the teacher nothing again and finds the same job."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import build_learnable_model, serve_app
from fastapi import FastAPI, Request
from typer.testing import CliRunner

from hone.cli import app as cli
from hone.distill.run import GOOD, NOT_GOOD, NOT_PROVEN, verdict
from hone.eval.stats import ratio_bootstrap_ci

FAST = {"tracking": {"enabled": False}, "eval": {"enabled": False}, "replay": None}
ANIMALS = ["cat", "dog", "fox", "owl"]


def _teacher_adapter(tmp_path: Path) -> tuple[Path, Path]:
    """A LoRA adapter trained here to answer with an animal (the teacher's specialism), and its base."""
    from hone.train.config import load_config
    from hone.train.run import train

    base = build_learnable_model(tmp_path / "teacher-base", seed=1)
    rows = [{"messages": [{"role": "user", "content": f"name animal {i} please"},
                          {"role": "assistant", "content": ANIMALS[i % 4]}]} for i in range(32)]
    (tmp_path / "teacher-train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "teacher.yaml").write_text(yaml.safe_dump({
        "base_model": str(base), "data": {"train": "teacher-train.jsonl", "max_length": 64},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "training": {"batch_size": 8, "lr": 1e-2, "epochs": 10, "log_every": 4},
        "output_dir": str(tmp_path / "teacher-runs"), "tracking": {"enabled": False}, "replay": "none"}))
    return train(load_config(tmp_path / "teacher.yaml", []), show_progress=False), base


def test_label_train_and_prove_with_a_served_teacher_then_resume_without_asking_again(tmp_path):
    from hone.api.app import create_app
    from hone.serve.config import ServeConfig

    teacher_run, teacher_base = _teacher_adapter(tmp_path)
    student_base = build_learnable_model(tmp_path / "student-base", seed=2)  # another model than the teacher's
    served = ServeConfig(base=str(teacher_base), base_id="teacher-base", dtype="fp32", threads=1,
                         adapters={"zoo-teacher": teacher_run},
                         database=f"sqlite:///{tmp_path / 'teacher.db'}", jobs={"worker": False})
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"name animal {i} please"}) + "\n"
                                                    for i in range(30)))
    config = tmp_path / "distill.yaml"
    with serve_app(create_app(served)) as url:
        config.write_text(yaml.safe_dump({
            "label": {"teacher": {"url": url, "model": "zoo-teacher", "max_tokens": 6, "concurrency": 4,
                                  "price_input_per_million": 3.0, "price_output_per_million": 15.0},
                      "prompts": "prompts.jsonl", "system": "Answer with one animal.",
                      "filters": {"max_length": 200},
                      "dataset": {"name": "zoo", "folder": str(tmp_path / "datasets"), "pii": None,
                                  "split": {"train": 0.7, "val": 0.1, "test": 0.2}}},
            "train": {"base": str(student_base), "hone": FAST, "suffix": "zoo",
                      "hyperparameters": {"n_epochs": 10, "batch_size": 4, "learning_rate_multiplier": 10}},
            "eval": {"max_new_tokens": 6, "threshold": 0.5, "student_price_per_hour": 1.0},
            "out": str(tmp_path / "run")}))
        first = CliRunner().invoke(cli, ["distill", "run", str(config), "--json"])
        assert first.exit_code == 0, first.output
        report = json.loads(first.output)

        assert report["labeling"]["labeled"] == 30 and report["labeling"]["usage"]["requests"] == 30
        version = Path(report["dataset"]["path"])
        assert version.name == f"zoo-{report['dataset']['dataset_id'][:12]}"
        rows = [json.loads(line) for split in ("train", "val", "test")
                for line in (version / f"{split}.jsonl").read_text().splitlines()]
        assert len(rows) == 30
        for row in rows:  # every row says which teacher wrote it, with which prompt template and filters
            lineage = row["metadata"]["distill"]
            assert lineage["teacher"]["model"] == "zoo-teacher" and lineage["teacher"]["url"] == url
            assert len(lineage["template_sha256"]) == 64 and lineage["filters"]["passed"] == ["empty", "max_length"]
            assert lineage["answered_at"]
        assert report["job"]["status"] == "succeeded"
        assert report["job"]["fine_tuned_model"].startswith("ft:student-base:default:zoo:")  # a name, not a path

        eval_report = json.loads(Path(report["eval_report"]).read_text())
        assert [c["name"] for c in eval_report["candidates"]] == ["base", "student", "teacher"]
        metric = report["metric"]
        scores = {name: [e["outputs"][name]["scores"][metric] for e in eval_report["examples"]]
                  for name in ("teacher", "student")}
        assert len(scores["teacher"]) == 6
        # the proof is computed from the per-example scores, not copied from anywhere
        assert report["quality_kept"] == ratio_bootstrap_ci(scores["student"], scores["teacher"])
        assert report["quality"]["teacher"]["mean"] == eval_report["aggregates"]["teacher"][metric]
        assert report["verdict"]["decision"] == verdict(report["quality_kept"], 0.5)["decision"]
        assert report["quality"]["student"]["mean"] > report["quality"]["base"]["mean"]  # it learned the teacher's task
        assert any("written by the teacher" in note for note in report["verdict"]["notes"])
        teacher_cost, student_cost = report["costs"]["teacher"], report["costs"]["student"]
        answers = (tmp_path / "run" / "teacher" / "answers.jsonl").read_text().splitlines()
        tokens = [json.loads(line) for line in answers]
        expected = 1000 * (sum(t["prompt_tokens"] for t in tokens) / 30 * 3.0
                           + sum(t["completion_tokens"] for t in tokens) / 30 * 15.0) / 1e6
        assert teacher_cost["cost_per_1k_requests"] == pytest.approx(expected)
        machine_s = eval_report["timings"]["student"]["seconds"] / 6  # measured here, at 1.0 per hour
        assert student_cost["cost_per_1k_requests"] == pytest.approx(1000 * machine_s / 3600)
        page = (tmp_path / "run" / "report.md").read_text()
        assert page.startswith(f"# Distillation: {report['verdict']['decision']}")

        again = CliRunner().invoke(cli, ["distill", "run", str(config), "--json"])
        assert again.exit_code == 0, again.output
        resumed = json.loads(again.output)
    assert resumed["labeling"]["usage"]["requests"] == 0 and resumed["labeling"]["usage"]["cached"] == 30
    assert resumed["dataset"]["dataset_id"] == report["dataset"]["dataset_id"]
    assert resumed["job"]["id"] == report["job"]["id"]  # the finished job is found again, not trained twice


def test_the_verdict_needs_the_whole_interval_above_the_threshold():
    assert verdict({"ratio": 0.97, "ci_low": 0.92, "ci_high": 1.0, "examples": 50}, 0.9)["decision"] == GOOD
    assert verdict({"ratio": 0.93, "ci_low": 0.85, "ci_high": 1.0, "examples": 50}, 0.9)["decision"] == NOT_PROVEN
    assert verdict({"ratio": 0.70, "ci_low": 0.60, "ci_high": 0.8, "examples": 50}, 0.9)["decision"] == NOT_GOOD
    assert verdict(None, 0.9)["decision"] == NOT_PROVEN


def test_quality_kept_is_the_ratio_of_means_with_a_paired_interval():
    teacher = [100.0] * 8 + [0.0] * 2
    student = [100.0] * 6 + [0.0] * 4
    kept = ratio_bootstrap_ci(student, teacher)
    assert kept["ratio"] == 0.75 and kept["examples"] == 10
    assert kept["ci_low"] < 0.75 < kept["ci_high"] <= 1.5
    assert ratio_bootstrap_ci([1.0, None], [0.0, 2.0]) is None  # the only paired example: teacher scored 0
    assert ratio_bootstrap_ci([None], [None]) is None


def test_a_bad_run_config_is_named(tmp_path):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({
        "label": {"teacher": {"url": "http://127.0.0.1:9/v1", "model": "m"}, "prompts": "p.jsonl"},
        "train": {"epochs": 3}, "out": str(tmp_path / "run")}))
    run = CliRunner().invoke(cli, ["distill", "run", str(tmp_path / "bad.yaml")])
    assert run.exit_code != 0 and "train.epochs" in str(run.exception)


def test_a_run_killed_mid_labeling_resumes_without_asking_the_teacher_again(tmp_path):
    app, calls, lock = FastAPI(), Counter(), threading.Lock()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        prompt = (await request.json())["messages"][-1]["content"]
        with lock:
            calls[prompt] += 1
        await asyncio.sleep(0.3)  # slow enough that the kill lands mid-run
        return {"id": "c", "object": "chat.completion", "created": 0, "model": "big",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": f"answer to {prompt}"},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}

    prompts = [f"question {i}" for i in range(12)]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    cache = tmp_path / "out" / "answers.jsonl"
    with serve_app(app) as url:
        (tmp_path / "label.yaml").write_text(yaml.safe_dump({
            "teacher": {"url": url, "model": "big", "concurrency": 1}, "prompts": "prompts.jsonl",
            "out": str(tmp_path / "out")}))
        command = [sys.executable, "-m", "hone", "distill", "label", str(tmp_path / "label.yaml"), "--json"]
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not (cache.is_file() and len(cache.read_text().splitlines()) >= 4):
            assert child.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        answered_before = len(cache.read_text().splitlines())
        assert answered_before < len(prompts)
        asked_before = sum(calls.values())

        rerun = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["labeled"] == 12 and summary["usage"]["cached"] == answered_before
    # only what had no cached answer was asked again: at most the one request the kill cut short is asked twice
    assert sum(calls.values()) - asked_before == 12 - answered_before
    assert set(calls) == set(prompts) and sum(count - 1 for count in calls.values()) <= 1


def test_a_run_takes_exactly_one_teacher_task(tmp_path):
    from hone.distill.run import load_run_config

    teacher = {"url": "http://127.0.0.1:9/v1", "model": "m"}
    (tmp_path / "seeds.jsonl").write_text("")
    task = {"teacher": teacher, "seeds": "seeds.jsonl", "count": 5}
    (tmp_path / "gen.yaml").write_text(yaml.safe_dump({"generate": task, "out": str(tmp_path / "run")}))
    config = load_run_config(tmp_path / "gen.yaml")
    assert config.task is config.generate and config.generate.seeds == tmp_path / "seeds.jsonl"
    assert config.generate.out == tmp_path / "run" / "teacher" and config.task.dataset.name == "distill-run"
    (tmp_path / "both.yaml").write_text(yaml.safe_dump({
        "generate": {"teacher": teacher, "seeds": "seeds.jsonl", "count": 5},
        "label": {"teacher": teacher, "prompts": "p.jsonl"}, "out": str(tmp_path / "run")}))
    run = CliRunner().invoke(cli, ["distill", "run", str(tmp_path / "both.yaml")])
    assert run.exit_code != 0 and "exactly one of `label`" in str(run.exception)
