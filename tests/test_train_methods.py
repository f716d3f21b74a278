"""Training methods beyond LoRA on the tiny model: DPO on preference pairs, full fine-tuning, the loss switches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from test_train import ANIMALS, make_config, write_chat_jsonl

from hone.errors import HoneError
from hone.models import load_model, load_tokenizer
from hone.models.finetuned import load_for_inference, read_run_dir
from hone.models.scoring import target_token_nll
from hone.train.batching import collate
from hone.train.config import load_config
from hone.train.dry_run import dry_run
from hone.train.run import train


def write_preferences(path: Path, count: int) -> Path:
    """The preferred reply names the animal in JSON; the rejected one is an unhelpful refusal."""
    lines = []
    for i in range(count):
        prompt = {"messages": [{"role": "user", "content": f"which animal is number {i}?"}]}
        lines.append(json.dumps({
            "input": prompt,
            "preferred_output": [{"role": "assistant", "content": f'{{"animal": "{ANIMALS[i % len(ANIMALS)]}"}}'}],
            "non_preferred_output": [{"role": "assistant", "content": "I do not know, sorry."}],
        }))
    path.write_text("\n".join(lines) + "\n")
    return path


def dpo_config(tmp_path: Path, model_dir: Path, **training) -> Path:
    write_preferences(tmp_path / "prefs.jsonl", 24)
    write_preferences(tmp_path / "prefs_eval.jsonl", 8)
    config = {
        "base_model": str(model_dir), "method": "dpo", "dpo": {"beta": 0.5},
        "data": {"train": "prefs.jsonl", "eval": "prefs_eval.jsonl", "max_length": 128},
        "lora": {"r": 8, "alpha": 16},
        "training": {"batch_size": 4, "lr": 1e-2, "epochs": 3, "eval_every": 6, "warmup_ratio": 0.0, **training},
        "output_dir": str(tmp_path / "runs"), "tracking": {"enabled": False},
    }
    path = tmp_path / "dpo.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_dpo_loss_falls_and_the_chosen_reply_wins(tmp_path, tiny_model_dir):
    run_dir = train(load_config(dpo_config(tmp_path, tiny_model_dir)), show_progress=False)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first, last = records[0], records[-1]
    assert first["train_loss"] == pytest.approx(0.6931, abs=0.02)  # adapter starts as the reference: log 2
    assert last["train_loss"] < 0.5 * first["train_loss"]
    assert last["chosen_reward"] > last["rejected_reward"]
    assert last["reward_margin"] > 0 and last["preference_accuracy"] == 1.0
    evals = [r for r in records if "eval_loss" in r]
    assert evals[-1]["eval_loss"] < 0.6931 and evals[-1]["eval_preference_accuracy"] >= 0.75
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["method"] == "dpo" and summary["examples"]["train"] == 24
    # The adapter is an ordinary PEFT adapter: it loads on the base, and moves it towards the preferred reply.
    model, tokenizer, _ = load_for_inference(run_dir, dtype=torch.float32)
    assert read_run_dir(run_dir).adapter_dir.is_dir()


def test_dpo_needs_preference_pairs_and_no_packing(tmp_path, tiny_model_dir):
    path = dpo_config(tmp_path, tiny_model_dir)
    write_chat_jsonl(tmp_path / "chat.jsonl", 4)
    with pytest.raises(HoneError, match=r"preference pairs \(OpenAI DPO format\) are needed"):
        train(load_config(path, ["data.train=chat.jsonl"]), show_progress=False)
    with pytest.raises(HoneError, match="packing does not apply to method dpo"):
        load_config(path, ["training.packing=true"])


def test_dpo_dry_run_shows_the_preferred_sequence_and_times_a_step(tmp_path, tiny_model_dir):
    report = dry_run(load_config(dpo_config(tmp_path, tiny_model_dir)))
    shown = "".join(text for text, trained in report["example"]["segments"] if trained)
    assert '"animal"' in shown and "sorry" not in shown
    assert report["estimate"]["tokens_per_s"] > 0


def test_full_fine_tune_writes_a_whole_model_that_loads_by_run_dir(tmp_path, tiny_model_dir):
    config = load_config(make_config(tmp_path, tiny_model_dir), ["method=full", "training.lr=1e-3",
                                                                   "training.precision=fp32"])
    run_dir = train(config, show_progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    base_parameters = sum(p.numel() for p in load_model(str(tiny_model_dir)).parameters())
    assert summary["trainable_parameters"] == base_parameters
    assert summary["model_dir"] == str(run_dir / "model") and summary["adapter_dir"] is None
    first_loss = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])["train_loss"]
    assert summary["best_eval_loss"] < first_loss - 0.5
    model, tokenizer, info = load_for_inference(run_dir, dtype=torch.float32)
    trained = dict(model.named_parameters())
    base = dict(load_model(str(tiny_model_dir)).named_parameters())
    assert not torch.equal(trained["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])
    with pytest.raises(HoneError, match="is a full fine-tune"):
        read_run_dir(run_dir)


def test_chunked_loss_equals_the_full_logits_loss(tiny_model_dir):
    from hone.data.render import render_chat

    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir))
    examples = [render_chat(tokenizer, [{"role": "user", "content": "hello " * n},
                                        {"role": "assistant", "content": "world " * (n + 1)}]) for n in (1, 4, 9)]
    batch = collate(examples, tokenizer.pad_token_id)
    chunked, counts = target_token_nll(model, batch, chunk_size=5)
    full, full_counts = target_token_nll(model, batch, chunked=False)
    assert torch.equal(counts, full_counts)
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)


def test_compiled_decoder_trains_like_the_eager_one(tmp_path, tiny_model_dir):
    path = make_config(tmp_path, tiny_model_dir)
    # Two steps without eval passes: compiling on CPU takes most of this test's time.
    settings = ["training.max_steps=2", "training.epochs=1", "data.eval=null", "training.eval_every=null",
                "training.precision=fp32"]
    eager = train(load_config(path, settings), show_progress=False)
    compiled = train(load_config(path, [*settings, "training.compile=true"]), show_progress=False)
    losses = [[json.loads(line)["train_loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
              for run in (eager, compiled)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-3)
