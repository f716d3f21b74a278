"""Defaults that ship: the verdict's primary metric follows the references, and `evaluate_run` answers "was
fine-tuning worth it?" for a finished run (base, 3-shot, RAG over its training data, the fine-tune, probes)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from test_train import write_chat_jsonl
from test_train_methods import dpo_config, write_preferences

from hone.errors import HoneError
from hone.eval.config import EvalConfig
from hone.eval.default import evaluate_run
from hone.eval.verdict import default_primary_metric, primary_metric
from hone.train.config import load_config, parse_config
from hone.train.run import train

VERDICTS = {"SHIP", "NOT WORTH IT", "REGRESSION", "INCOMPLETE"}
CANDIDATES = ["base", "3-shot", "rag", "fine-tuned"]


def test_short_labels_are_judged_on_exact_match():
    choice = default_primary_metric(["billing", "shipping", "billing", "technical support", "returns"])
    assert choice.name == "exact_match"
    assert choice.reason == "5 of 5 references are short answers of at most 5 words (4 distinct)"


def test_json_objects_are_judged_on_json_field_accuracy():
    references = ['{"category": "billing", "urgent": true}', '{"category": "returns", "urgent": false}',
                  '{"category": "shipping"}', '{"category": "account", "urgent": true}', "not JSON at all"]
    choice = default_primary_metric(references)
    assert choice.name == "json_fields" and choice.reason == "4 of 5 references are JSON objects"
    assert default_primary_metric(references[:3] + ["no", "no"]).name == "exact_match"  # 3 of 5: not most


def test_free_text_is_judged_on_rouge_l():
    synopses = ["A young wizard discovers his heritage and attends a school of magic where he makes friends.",
                "Two families feud in a city while their children fall in love, which ends in tragedy for both.",
                "Yes.",
                "A sailor hunts the white whale that took his leg, dragging his whole crew to their doom."]
    choice = default_primary_metric(synopses)
    assert choice.name == "rouge_l"
    assert choice.reason == ("the references are free text: only 1 of 4 are short answers of at most 5 words and 0 "
                             "are JSON objects")


def test_a_label_set_or_a_configured_metric_comes_first():
    assert default_primary_metric(["a long free text reference " * 5], labels=["a", "b"]).name == "accuracy"
    settings = EvalConfig(base="m", data="t.jsonl", out="o", verdict={"primary_metric": "chrf"})
    assert primary_metric(settings, ["billing"]).reason == "set in verdict.primary_metric"
    assert primary_metric(settings, ["billing"]).name == "chrf"


def _run(folder: Path, model_dir: Path, **extra) -> Path:
    write_chat_jsonl(folder / "train.jsonl", 24)
    config = parse_config({"base_model": str(model_dir), "data": {"train": str(folder / "train.jsonl"),
                                                                  "max_length": 256},
                           "training": {"max_steps": 2, "batch_size": 4, "lr": 5e-3}, "tracking": {"enabled": False},
                           "replay": "none", "output_dir": str(folder / "runs"), **extra})
    return train(config, show_progress=False)


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory) -> Path:
    return _run(tmp_path_factory.mktemp("lora"), tiny_model_dir)


def _copy(run_dir: Path, folder: Path) -> Path:
    shutil.copytree(run_dir, folder)
    return folder


def _check(result, run_dir: Path, out: Path) -> dict:
    """What every default evaluation must give: a verdict with reasons, and reports that name every candidate."""
    assert result.verdict in VERDICTS and result.reasons
    assert result.report_json == out / "report.json" and result.report_json.is_file()
    assert result.report_html.is_file()
    assert result.candidates == CANDIDATES and list(result.figures) == CANDIDATES
    report = json.loads(result.report_json.read_text())
    assert [c["name"] for c in report["candidates"]] == CANDIDATES
    assert report["models"]["fine-tuned"]["run_dir"] == str(run_dir.resolve())
    assert report["config"]["limit"] == 4 and report["forgetting"]["probes"] == 6
    html = result.report_html.read_text()
    assert all(f"<th>{name}</th>" in html for name in CANDIDATES)
    assert f"primary metric: {result.primary_metric_reason}" in html
    assert report["verdict"]["primary_metric_reason"] == result.primary_metric_reason
    base = result.figures["base"]
    assert base.value is not None and base.delta is None
    for name in CANDIDATES[1:]:
        figure = result.figures[name]
        assert figure.ci_low <= figure.delta <= figure.ci_high
        assert figure.value == report["aggregates"][name][result.primary_metric]
    assert json.loads(json.dumps(result.to_dict()))["report_json"] == str(result.report_json)
    return report


def test_evaluate_run_of_a_lora_run_compares_prompting_rag_and_the_fine_tune(tmp_path, lora_run):
    run_dir = _copy(lora_run, tmp_path / "run")
    test = write_chat_jsonl(tmp_path / "test.jsonl", 6)
    result = evaluate_run(run_dir, test, max_examples=4, probe_limit=6)
    report = _check(result, run_dir, run_dir / "eval")  # the default out_dir
    # '{"animal": "cat"}' references: JSON objects, so the verdict rests on JSON field accuracy
    assert result.primary_metric == "json_fields" and report["verdict"]["primary_metric"] == "json_fields"
    assert report["config"]["train"] == str(lora_run.parent.parent / "train.jsonl")  # the run's own data
    shot = report["examples"][0]["outputs"]["3-shot"]["prompt"]
    assert len(shot) == 1 + 2 * 3 and "which animal is number" in shot[0]["content"]
    assert set(report["forgetting"]["models"]) == {"base", "fine-tuned"}
    assert "adapter" in report["models"]["fine-tuned"]
    memorization = report["memorization"]  # on by default, against the run's training file
    assert memorization["ngram"] == 13 and set(memorization["candidates"]) == set(CANDIDATES)
    assert all(figures["replies"] == 4 for figures in memorization["candidates"].values())


def test_evaluate_run_of_a_full_fine_tune_loads_its_whole_model(tmp_path, tiny_model_dir):
    run_dir = _run(tmp_path, tiny_model_dir, method="full",
                   training={"max_steps": 2, "batch_size": 4, "lr": 5e-2, "precision": "fp32"})
    test = write_chat_jsonl(tmp_path / "test.jsonl", 4)
    result = evaluate_run(run_dir, test, out_dir=tmp_path / "eval", max_examples=4, probe_limit=6)
    report = _check(result, run_dir, tmp_path / "eval")
    assert report["models"]["fine-tuned"]["model"] == str((run_dir / "model").resolve())
    assert len(report["models"]["fine-tuned"]["model_fingerprint"]) == 64
    outputs = [e["outputs"] for e in report["examples"]]
    assert any(o["base"]["text"] != o["fine-tuned"]["text"] for o in outputs), "the full model must be used"


def test_evaluate_run_of_a_dpo_run_takes_the_preferred_replies_as_references(tmp_path, tiny_model_dir):
    run_dir = train(load_config(dpo_config(tmp_path, tiny_model_dir), ["training.max_steps=1"]),
                    show_progress=False)
    test = write_preferences(tmp_path / "test_prefs.jsonl", 4)
    result = evaluate_run(run_dir, test, max_examples=4, probe_limit=6)
    report = _check(result, run_dir, run_dir / "eval")
    assert report["examples"][1]["reference"] == '{"animal": "dog"}'  # the preferred reply of pair 2
    assert report["examples"][0]["outputs"]["rag"]["prompt"][-2]["content"].startswith('{"animal"')


def test_evaluate_run_without_its_training_data_leaves_out_3_shot_and_rag_and_says_so(tmp_path, lora_run):
    run_dir = _copy(lora_run, tmp_path / "run")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["data"]["train"] = str(tmp_path / "gone.jsonl")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    result = evaluate_run(run_dir, write_chat_jsonl(tmp_path / "test.jsonl", 4), max_examples=4, probe_limit=0)
    assert result.candidates == ["base", "fine-tuned"] and result.verdict in VERDICTS
    assert any("3-shot and rag were not evaluated" in warning for warning in result.warnings)
    saved = json.loads(result.report_json.read_text())
    assert saved["forgetting"] is None  # probe_limit 0: no probes
    assert saved["memorization"] is None
    assert any("memorization was not measured" in warning for warning in result.warnings)


@pytest.mark.parametrize("missing", ["config.yaml", "adapter"])
def test_evaluate_run_of_a_broken_run_dir_is_a_clear_error(tmp_path, lora_run, missing):
    run_dir = _copy(lora_run, tmp_path / "run")
    target = run_dir / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(HoneError, match="config.yaml is missing|has no usable adapter"):
        evaluate_run(run_dir, write_chat_jsonl(tmp_path / "test.jsonl", 4), max_examples=4, probe_limit=0)


def test_replay_examples_of_a_prepared_dataset_are_not_used_as_shots_or_for_rag(tmp_path, tiny_model_dir):
    from hone.data.curate.prepare import PrepareConfig, prepare

    write_chat_jsonl(tmp_path / "raw.jsonl", 40)
    general = tmp_path / "general.jsonl"
    general.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"general question {i}"},
                                                        {"role": "assistant", "content": f"answer {i}"}]}) + "\n"
                               for i in range(10)))
    prepare(PrepareConfig(inputs=[{"path": tmp_path / "raw.jsonl"}], out=tmp_path / "ds",
                          replay={"source": str(general), "fraction": 0.3}))
    assert "general question" in (tmp_path / "ds" / "train.jsonl").read_text()
    run_dir = _run(tmp_path, tiny_model_dir, data={"train": str(tmp_path / "ds"), "max_length": 256})
    result = evaluate_run(run_dir, write_chat_jsonl(tmp_path / "test.jsonl", 2), max_examples=2, probe_limit=0)
    report = json.loads(result.report_json.read_text())
    pool = Path(report["config"]["train"])
    assert pool == run_dir / "eval" / "inputs" / "train_without_replay.jsonl"
    assert "general question" not in pool.read_text() and "which animal" in pool.read_text()
    assert result.candidates == CANDIDATES
