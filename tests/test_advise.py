"""`hone advise`: the recommendation rule on hand-made evidence, and a full run on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_eval_candidates import TEST, TRAIN
from test_eval_run import write_chats
from typer.testing import CliRunner

from hone.advise import advise, default_primary_metric, recommend
from hone.cli import app
from hone.errors import HoneError
from hone.eval.metrics import METRICS

NAMES = ["zero-shot", "few-shot", "rag", "fine-tuned", "fine-tuned+rag"]


def _report(right: dict[str, int], prompt_tokens: dict[str, float], examples: int = 40) -> dict:
    """A report where candidate n gets the first right[n] of `examples` exact-match questions right."""
    rows = [{"outputs": {n: {"scores": dict.fromkeys(METRICS) | {"exact_match": 100.0 * (i < right[n])}}
                         for n in NAMES}} for i in range(examples)]
    return {"examples": rows,
            "aggregates": {n: {"exact_match": 100.0 * right[n] / examples} for n in NAMES},
            "timings": {n: {"prompt_tokens_mean": prompt_tokens[n]} for n in NAMES}}


TOKENS = {"zero-shot": 50, "few-shot": 200, "rag": 180, "fine-tuned": 50, "fine-tuned+rag": 180}


def test_fine_tuning_is_recommended_only_when_it_clearly_wins():
    clear = recommend(_report({"zero-shot": 4, "few-shot": 12, "rag": 10, "fine-tuned": 30, "fine-tuned+rag": 28},
                              TOKENS), "exact_match", 5)
    assert clear["approach"] == "fine-tuning" and clear["gain_over"] == "few-shot"
    assert clear["gain"]["delta"] == 45.0 and clear["gain"]["ci_low"] > 0

    hybrid = recommend(_report({"zero-shot": 4, "few-shot": 12, "rag": 10, "fine-tuned": 26, "fine-tuned+rag": 34},
                               TOKENS), "exact_match", 5)
    assert hybrid["approach"] == "hybrid (fine-tuning + RAG)"


def test_cheapest_close_approach_wins_when_fine_tuning_does_not():
    # fine-tuned is 2.5 points above RAG: under the threshold, so take the cheapest within 5 points of RAG
    close = recommend(_report({"zero-shot": 2, "few-shot": 19, "rag": 20, "fine-tuned": 21, "fine-tuned+rag": 21},
                              TOKENS), "exact_match", 5)
    assert close["approach"] == "RAG" and close["candidate"] == "rag"  # 180 tokens beat few-shot's 200
    assert "under 5 points" in close["reason"]
    plain = recommend(_report({"zero-shot": 20, "few-shot": 20, "rag": 21, "fine-tuned": 21, "fine-tuned+rag": 20},
                              TOKENS), "exact_match", 5)
    assert plain["approach"] == "prompting" and plain["candidate"] == "zero-shot"


def test_default_metric_follows_the_answers_as_in_eval():
    assert default_primary_metric(['{"a": 1}', '{"b": 2}'], None).name == "json_fields"
    assert default_primary_metric(["yes", "no refund"], None).name == "exact_match"
    assert default_primary_metric(["yes"], ["yes", "no"]).name == "accuracy"
    synopsis = "The customer asks for a refund because the parcel arrived late and the box was damaged."
    assert default_primary_metric([synopsis, synopsis], None).name == "rouge_l"


def test_advise_runs_every_approach_within_the_budget_on_the_tiny_model(tiny_model_dir, tmp_path):
    train = write_chats(tmp_path / "train.jsonl", TRAIN * 4)
    test = write_chats(tmp_path / "test.jsonl", TEST * 3)
    result = CliRunner().invoke(app, ["advise", "--train", str(train), "--test", str(test), "--base",
                                      str(tiny_model_dir), "--budget-minutes", "1", "--out", str(tmp_path / "adv"),
                                      "--labels", "billing,technical,shipping", "--json"])
    assert result.exit_code == 0, result.output
    advice = json.loads(result.stdout)
    assert advice["primary_metric"] == "accuracy"
    assert [row["candidate"] for row in advice["evidence"]] == NAMES
    cost = {row["candidate"]: row for row in advice["evidence"]}
    assert cost["few-shot"]["prompt_tokens"] > cost["zero-shot"]["prompt_tokens"]
    assert cost["fine-tuned"]["one_off_training_s"] > 0 and cost["rag"]["one_off_training_s"] == 0
    assert advice["recommendation"]["approach"] in {"prompting", "RAG", "fine-tuning", "hybrid (fine-tuning + RAG)"}
    assert advice["sample"]["trained_steps"] >= 1 and advice["sample"]["test_examples"] == 12
    assert (Path(advice["paths"]["run_dir"]) / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads(Path(advice["paths"]["advice"]).read_text())["recommendation"] == advice["recommendation"]


def test_too_small_a_budget_is_refused(tmp_path):
    with pytest.raises(HoneError, match="too short"):
        advise(tmp_path / "t.jsonl", tmp_path / "t.jsonl", tmp_path / "out", budget_minutes=0.5)
