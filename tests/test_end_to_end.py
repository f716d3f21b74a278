"""End to end on the real bundled SmolLM2-135M-Instruct: train a few steps, load the adapter, evaluate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "support_tickets"
MODEL = "smollm2-135m-instruct"

pytestmark = pytest.mark.real_model


def test_cli_lists_the_bundled_model(shared_model_cache):
    result = subprocess.run([sys.executable, "-m", "hone", "models", "list", "--json"], capture_output=True,
                            text=True, check=True)
    models = {m["name"]: m for m in json.loads(result.stdout)["models"]}
    assert models[MODEL]["installed"] is True


def test_train_then_evaluate_on_the_real_model(tmp_path, shared_model_cache):
    from peft import PeftModel

    from hone.eval import evaluate, load_eval_config
    from hone.models import load_model
    from hone.train.config import load_config
    from hone.train.run import train

    subset = tmp_path / "train32.jsonl"
    subset.write_text("".join(DATA.joinpath("train.jsonl").read_text().splitlines(keepends=True)[:32]))
    config = load_config(DATA / "demo.yaml", [f"data.train={subset}", "data.eval_fraction=0.0",
                                              "training.early_stopping_patience=null", "training.eval_every=null",
                                              "training.max_steps=3", f"output_dir={tmp_path / 'runs'}"])
    run_dir = train(config, show_progress=False)

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["tokens"] > 0
    assert summary["base_model_fingerprint"] and summary["dataset_fingerprint"]
    # replay by default: 4 answers of SmolLM2 itself (33 s on the 2-core CPU when not yet cached, then none)
    assert 0 < summary["replay"]["examples"] <= summary["replay"]["target"] == 4
    assert summary["examples"]["train"] == 32 + summary["replay"]["examples"]
    PeftModel.from_pretrained(load_model(MODEL), str(run_dir / "adapter"))

    settings = load_eval_config(DATA / "eval.yaml", {"adapter": run_dir, "out": tmp_path / "eval", "limit": 4,
                                                     "max_new_tokens": 48})
    settings.forgetting.limit = 6
    report = evaluate(settings, show_progress=False)
    names = ["base", "3-shot", "rag", "fine-tuned", "fine-tuned+rag"]
    assert list(report["aggregates"]) == names
    assert all(report["comparisons"][n]["json_fields"] is not None for n in names[1:])
    assert report["classification"]["fine-tuned"]["confusion"] and report["forgetting"]["probes"] == 6
    assert report["timings"]["rag"]["prompt_tokens_mean"] > report["timings"]["base"]["prompt_tokens_mean"]
    assert report["verdict"]["primary_metric"] == "json_fields"
    assert Path(report["paths"]["html"]).is_file()
