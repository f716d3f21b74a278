"""Replay in `hone train`: general examples answered by the base model are mixed into the training data by
default, generated once and cached, seeded, never mixed twice, and recorded in summary.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_train import write_chat_jsonl
from test_train_methods import dpo_config
from typer.testing import CliRunner

from hone.cli import app
from hone.data.curate import replay as replay_module
from hone.data.curate.replay import replay_count
from hone.errors import HoneError
from hone.models import load_tokenizer
from hone.train.config import load_config, parse_config
from hone.train.data import load_training_data


def settings(tmp_path: Path, model_dir: Path, **extra) -> dict:
    if not (tmp_path / "train.jsonl").exists():
        write_chat_jsonl(tmp_path / "train.jsonl", 36)
    return {"base_model": str(model_dir), "data": {"train": str(tmp_path / "train.jsonl"), "max_length": 512},
            "training": {"max_steps": 1, "batch_size": 4}, "tracking": {"enabled": False},
            "output_dir": str(tmp_path / "runs"), **extra}


@pytest.fixture
def short_answers(monkeypatch) -> list[str]:
    """The base model answers each general prompt briefly (the tiny random model never ends an answer); returns
    the prompts that reached the model."""
    asked: list[str] = []

    def generate(model, prompts, replay_settings, show_progress):
        asked.extend(prompts)
        return {prompt: f"In short: {prompt[:30]}" for prompt in prompts}

    monkeypatch.setattr(replay_module, "_generate", generate)
    return asked


def test_replay_is_on_by_default_and_turned_off_by_none_or_zero(tmp_path):
    data = {"train": "x.jsonl"}
    default = parse_config({"data": data})
    assert default.replay_enabled and default.replay.fraction == 0.1 and default.replay.source == "self"
    assert default.replay.max_new_tokens == 256
    for off in ("none", None, False, {"fraction": 0}):
        assert not parse_config({"data": data, "replay": off}).replay_enabled
    with pytest.raises(HoneError, match=r"replay.fractoin: unknown key; did you mean 'fraction'"):
        parse_config({"data": data, "replay": {"fractoin": 0.2}})
    with pytest.raises(HoneError, match=r"replay.fraction: Input should be less than 1"):
        parse_config({"data": data, "replay": {"fraction": 1}})

    assert parse_config({"data": data, "method": "dpo"}).replay is None  # preference pairs: off, silently
    with pytest.raises(HoneError, match=r"replay: does not apply to method dpo: .* set replay: none"):
        parse_config({"data": data, "method": "dpo", "replay": {"fraction": 0.1}})

    config = tmp_path / "configs" / "train.yaml"
    config.parent.mkdir()
    (config.parent / "general.jsonl").write_text("")
    config.write_text("data: {train: x.jsonl}\nreplay: {source: general.jsonl}\n")
    assert load_config(config).replay.source == str(config.parent / "general.jsonl")


def test_replay_is_mixed_into_the_training_split_seeded_and_generated_only_once(tmp_path, tiny_model_dir,
                                                                             short_answers):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    raw = settings(tmp_path, tiny_model_dir, data={"train": str(tmp_path / "train.jsonl"), "eval_fraction": 0.25,
                                                   "max_length": 512})
    first = load_training_data(parse_config(raw), tokenizer, show_progress=False)
    target = replay_count(27, 0.1)  # 36 examples less the 9 held out for eval
    assert first.replay.target == target == 3 and first.replay.examples == 3
    assert len(first.train) == 27 + 3 and len(first.eval) == 9  # replay goes to training only
    assert first.replay.counts["answers_generated"] == 3 and len(short_answers) == 3
    assert first.replay.settings["source"] == "self" and len(first.replay.fingerprint) == 64
    trained_texts = [example.text for example in first.train]
    assert all(any(f"In short: {prompt[:30]}" in text for text in trained_texts) for prompt in short_answers)
    assert first.replay.warning is None

    again = load_training_data(parse_config(raw), tokenizer, show_progress=False)
    assert len(short_answers) == 3, "the second run must generate nothing"
    assert again.replay.counts == {"answers_cached": 3}
    assert again.replay.fingerprint == first.replay.fingerprint
    assert [e.input_ids for e in again.train] == [e.input_ids for e in first.train]
    cached = list((Path(tmp_path / "hone-home") / "replay").glob("*-256.jsonl"))
    assert len(cached) == 1 and len(cached[0].read_text().splitlines()) == 3

    other_seed = load_training_data(parse_config({**raw, "training": {"seed": 7}}), tokenizer, show_progress=False)
    assert other_seed.replay.fingerprint != first.replay.fingerprint


def test_train_records_replay_in_the_summary_and_warns_when_it_is_off(tmp_path, tiny_model_dir, short_answers):
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(settings(tmp_path, tiny_model_dir)))
    result = CliRunner().invoke(app, ["train", str(config), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    replay = summary["replay"]
    assert replay["examples"] == replay["target"] == 4 and summary["examples"]["replay"] == 4
    assert summary["examples"]["train"] == 36 + 4
    assert replay["settings"] == {"fraction": 0.1, "source": "self", "max_new_tokens": 256, "batch_size": 16}
    assert len(replay["fingerprint"]) == 64 and "replay is off" not in result.stderr

    plain = CliRunner().invoke(app, ["train", str(config)])
    assert plain.exit_code == 0, plain.output
    printed = " ".join(plain.stdout.split())  # the console wraps long lines
    fingerprint = replay["fingerprint"][:12]
    assert f"replay: 4 general examples answered by the base model mixed in (fingerprint {fingerprint})" in printed

    off = CliRunner().invoke(app, ["train", str(config), "--set", "replay=none", "--json"])
    assert off.exit_code == 0, off.output
    assert json.loads(off.stdout)["replay"]["examples"] == 0
    assert "warning: replay is off: the fine-tune sees only your data and may forget general skills" in off.stderr
    assert "--set 'replay={fraction: 0.1, source: self}'" in off.stderr


def test_the_tiny_model_generates_batched_once_and_cut_off_answers_are_left_out_with_a_warning(tmp_path,
                                                                                              tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    raw = settings(tmp_path, tiny_model_dir, replay={"max_new_tokens": 16, "batch_size": 8})
    first = load_training_data(parse_config(raw), tokenizer, show_progress=False)
    # The random tiny model never ends an answer: every one is cut off, replaced once, then reported short.
    assert first.replay.target == 4 and first.replay.examples == 0 and len(first.train) == 36
    assert first.replay.counts["answers_generated"] == 8 and first.replay.counts["short_of_target"] == 4
    assert "only 0 of 4 general examples could be mixed in" in first.replay.warning
    again = load_training_data(parse_config(raw), tokenizer, show_progress=False)
    assert again.replay.counts.get("answers_generated") is None and again.replay.counts["answers_cached"] == 8


def test_a_prepared_dataset_that_has_replay_is_not_mixed_again(tmp_path, tiny_model_dir, short_answers):
    from hone.data.curate.prepare import PrepareConfig, prepare

    write_chat_jsonl(tmp_path / "raw.jsonl", 40)
    general = tmp_path / "general.jsonl"
    general.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"general question {i}"},
                                                        {"role": "assistant", "content": f"answer {i}"}]}) + "\n"
                               for i in range(10)))
    manifest = prepare(PrepareConfig(inputs=[{"path": tmp_path / "raw.jsonl"}], out=tmp_path / "ds",
                                     replay={"source": str(general), "fraction": 0.2}))
    tokenizer = load_tokenizer(str(tiny_model_dir))
    raw = settings(tmp_path, tiny_model_dir, data={"train": str(tmp_path / "ds")})
    data = load_training_data(parse_config(raw), tokenizer, show_progress=False)
    assert data.dataset_id == manifest["dataset_id"] and len(data.train) == manifest["counts"]["train"]
    assert data.replay.examples == 0 and not short_answers
    assert f"dataset id {manifest['dataset_id']}) already holds replay" in data.replay.note
    assert data.replay.warning is None

    plain = prepare(PrepareConfig(inputs=[{"path": tmp_path / "raw.jsonl"}], out=tmp_path / "plain"))
    data = load_training_data(parse_config(settings(tmp_path, tiny_model_dir, data={"train": str(tmp_path / "plain")})),
                              tokenizer, show_progress=False)
    assert data.replay.examples == replay_count(plain["counts"]["train"], 0.1) > 0  # a folder without replay gets it


def test_dpo_runs_have_no_replay_and_no_warning(tmp_path, tiny_model_dir, short_answers):
    config = load_config(dpo_config(tmp_path, tiny_model_dir))
    data = load_training_data(config, load_tokenizer(str(tiny_model_dir)), show_progress=False)
    assert data.replay.examples == 0 and data.replay.warning is None and not short_answers
    assert "method dpo trains on preference pairs" in data.replay.note
