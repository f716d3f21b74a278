"""Training data: load, render with the chat template, skip what is too long, split off eval."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

from hone.data.formats import load_chat_examples, load_preference_examples
from hone.data.render import RenderedExample, render_chat
from hone.data.versions import is_dataset_dir, read_manifest
from hone.errors import HoneError
from hone.train.config import TrainConfig


@dataclass
class TrainingData:
    """Tokenized train/eval examples (for DPO: preference pairs) plus what was skipped and why."""

    train: list
    eval: list
    fingerprint: str
    skipped: dict[str, int] = field(default_factory=dict)
    dataset_id: str | None = None  # set when training on a `hone data prepare` dataset folder

    @property
    def train_tokens(self) -> int:
        return sum(len(example) for example in self.train)


def dataset_fingerprint(paths: list[Path], config: TrainConfig) -> str:
    """sha256 of the data files' bytes plus the settings that change which examples are used."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(hashlib.sha256(path.read_bytes()).hexdigest().encode())
    digest.update(f"{config.data.eval_fraction}:{config.data.max_length}:{config.training.seed}".encode())
    return digest.hexdigest()


def _rendered(tokenizer, path: Path, preferences: bool) -> list:
    """Conversations as `RenderedExample`s, or (for DPO) preference pairs as `PreferencePair`s."""
    if preferences:
        from hone.train.dpo import render_pair

        return [render_pair(tokenizer, pair) for pair in load_preference_examples(path)]
    return [render_chat(tokenizer, example.messages) for example in load_chat_examples(path)]


def _sequences(item) -> list[RenderedExample]:
    return [item.chosen, item.rejected] if hasattr(item, "chosen") else [item]


def _render_all(tokenizer, path: Path, max_length: int, skipped: dict[str, int], preferences: bool) -> list:
    rendered = []
    for item in _rendered(tokenizer, path, preferences):
        sequences = _sequences(item)
        if any(len(sequence) > max_length for sequence in sequences):
            skipped["longer_than_max_length"] = skipped.get("longer_than_max_length", 0) + 1
        elif any(sum(sequence.trained[1:]) == 0 for sequence in sequences):
            skipped["no_trained_tokens"] = skipped.get("no_trained_tokens", 0) + 1
        else:
            rendered.append(item)
    return rendered


def use_dataset_dir(config: TrainConfig) -> str | None:
    """Point data.train (and data.eval, when unset) at a prepared dataset folder's files; returns its id."""
    if not is_dataset_dir(config.data.train):
        return None
    folder = config.data.train
    manifest = read_manifest(folder)
    config.data.train = folder / "train.jsonl"
    has_val = manifest.get("files", {}).get("val.jsonl", {}).get("examples", 0) > 0
    if config.data.eval is None and config.data.eval_fraction == 0 and has_val:
        config.data.eval = folder / "val.jsonl"
    return manifest["dataset_id"]


def load_training_data(config: TrainConfig, tokenizer) -> TrainingData:
    """Render every example once; too-long examples are skipped and counted, never silently cut."""
    dataset_id = use_dataset_dir(config)
    skipped: dict[str, int] = {}
    preferences = config.method == "dpo"
    train = _render_all(tokenizer, config.data.train, config.data.max_length, skipped, preferences)
    paths = [config.data.train]
    if config.data.eval is not None:
        evaluation = _render_all(tokenizer, config.data.eval, config.data.max_length, skipped, preferences)
        paths.append(config.data.eval)
    elif config.data.eval_fraction > 0:
        order = list(range(len(train)))
        random.Random(config.training.seed).shuffle(order)
        cut = max(1, int(len(train) * config.data.eval_fraction))
        evaluation = [train[i] for i in order[:cut]]
        train = [train[i] for i in order[cut:]]
    else:
        evaluation = []
    if not train:
        raise HoneError(f"{config.data.train}: no usable training examples (skipped: {skipped or 'none'})",
                        hint=f"check data.max_length ({config.data.max_length}) and that examples have "
                        "assistant turns; `hone data validate` lists the problems")
    return TrainingData(train=train, eval=evaluation, fingerprint=dataset_fingerprint(paths, config),
                        skipped=skipped, dataset_id=dataset_id)
