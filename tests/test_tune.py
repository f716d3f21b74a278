"""`hone tune` on the tiny model: trials, best config, resuming the study, pruning, clear errors."""

from __future__ import annotations

import json

import pytest
import yaml
from test_train import make_config
from typer.testing import CliRunner

from hone.cli import app
from hone.errors import HoneError
from hone.train.config import load_config
from hone.train.run import train
from hone.train.tune import load_space, tune

QUICK = ["training.max_steps=4", "training.eval_every=2", "training.epochs=1"]


def run_cli(*args: str) -> dict:
    result = CliRunner().invoke(app, ["tune", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_tune_writes_the_best_config_and_resumes_the_study(tmp_path, tiny_model_dir):
    config, out = make_config(tmp_path, tiny_model_dir), tmp_path / "tune"
    sets = [arg for item in QUICK for arg in ("--set", item)]
    first = run_cli(str(config), "--trials", "4", "--out", str(out), *sets)
    assert len(first["trials"]) == 4 and (out / "study.db").is_file()
    assert {t["state"] for t in first["trials"]} <= {"complete", "pruned"}
    assert set(first["trials"][0]["values"]) == {"training.lr", "lora.r", "lora.alpha", "lora.dropout",
                                                 "training.batch_size"}
    for trial in first["trials"]:
        values = trial["values"]
        assert values["lora.alpha"] / values["lora.r"] in (1, 2) and 1e-5 <= values["training.lr"] <= 5e-3
        assert trial["run_dir"].startswith(str(out / "trials" / f"trial-{trial['number']:03d}"))

    best = first["best"]
    complete = [t for t in first["trials"] if t["state"] == "complete"]
    assert best["best_eval_loss"] == min(t["best_eval_loss"] for t in complete)
    saved = load_config(out / "best.yaml")
    assert saved.training.lr == best["values"]["training.lr"] and saved.lora.r == best["values"]["lora.r"]
    assert saved.lora.alpha == best["values"]["lora.alpha"] and saved.training.max_steps == 4
    assert saved.output_dir == tmp_path / "runs"  # the base placement, not the trial's

    again = run_cli(str(config), "--trials", "2", "--out", str(out), *sets)
    assert [t["number"] for t in again["trials"]] == list(range(6))
    assert again["trials"][:4] == first["trials"]
    assert again["trials"][4]["values"] != first["trials"][0]["values"]  # the sampler does not replay draws


def test_a_clearly_worse_trial_is_pruned(tmp_path, tiny_model_dir):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"training.lr": {"type": "categorical", "choices": [1e-8, 5e-3]}}))
    seen = []
    report = tune(make_config(tmp_path, tiny_model_dir), 6, overrides=["training.max_steps=6"],
                  space=load_space(space), out=tmp_path / "tune", on_trial=seen.append)
    assert [r.number for r in seen] == list(range(6))
    pruned = [r for r in report.trials if r.state == "pruned"]
    assert pruned and all(r.values["training.lr"] == 1e-8 and r.steps < 6 for r in pruned)
    assert report.best.values == {"training.lr": 5e-3}


def test_an_on_eval_hook_returning_true_stops_the_run_as_pruned(tmp_path, tiny_model_dir):
    calls = []

    def stop(step: int, loss: float) -> bool:
        calls.append(step)
        return True

    run_dir = train(load_config(make_config(tmp_path, tiny_model_dir)), show_progress=False, on_eval=stop)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert calls == [3] and summary["steps"] == 3 and summary["pruned"] and not summary["stopped_early"]
    assert summary["best_eval_loss"] is not None


def test_a_bad_space_key_is_named(tmp_path, tiny_model_dir):
    config = make_config(tmp_path, tiny_model_dir)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"training.learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3}}))
    with pytest.raises(HoneError, match=r"(?s)search space training.learning_rate=.*did you mean 'lr'"):
        tune(config, 1, space=load_space(space), out=tmp_path / "tune")
    space.write_text(yaml.safe_dump({"lora.r": {"type": "uniform", "low": 4, "high": 8}}))
    with pytest.raises(HoneError, match=r"lora.r"):
        load_space(space)
    space.write_text(yaml.safe_dump({"lora.dropout": {"type": "float", "low": 0.0, "high": 1.0}}))
    with pytest.raises(HoneError, match=r"(?s)search space lora.dropout=1.0: .*lora.dropout"):
        tune(config, 1, space=load_space(space), out=tmp_path / "tune")
    assert not (tmp_path / "tune").exists()  # rejected before any trial


def test_a_config_without_an_eval_set_is_refused_before_any_trial(tmp_path, tiny_model_dir):
    config = make_config(tmp_path, tiny_model_dir)
    with pytest.raises(HoneError, match="no eval set"):
        tune(config, 2, overrides=["data.eval=null"], out=tmp_path / "tune")
    assert not (tmp_path / "tune").exists()
