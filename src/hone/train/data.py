"""Training data: load, render with the chat template, skip what is too long, split off eval, mix in replay."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hone.data.formats import Example, load_chat_examples, load_preference_examples
from hone.data.render import RenderedExample, render_chat
from hone.data.versions import is_dataset_dir, read_manifest
from hone.errors import HoneError
from hone.train.config import TrainConfig

TURN_ON_REPLAY = ("--set 'replay={fraction: 0.1, source: self}' (or `replay: {fraction: 0.1, source: self}` in "
                  "the config)")


@dataclass
class ReplayMix:
    """The general examples mixed into the training split against forgetting: summary.json's `replay`."""

    settings: dict[str, Any] | None  # the replay config used; None when replay was off
    target: int = 0
    examples: int = 0
    fingerprint: str | None = None  # sha256 of the replay conversations (see replay_fingerprint)
    counts: dict[str, int] = field(default_factory=dict)  # answers generated / cached / skipped
    note: str | None = None  # why no replay was mixed in here although the run may still have some

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def warning(self) -> str | None:
        """What `hone train` warns about: replay off, or fewer replay examples than asked for."""
        if self.settings is None and self.note is None:
            return ("replay is off: the fine-tune sees only your data and may forget general skills (a narrow "
                    "fine-tune can answer every question in its task's format); turn it on with " + TURN_ON_REPLAY)
        if self.examples < self.target and self.settings["source"] == "self":
            return (f"replay: only {self.examples} of {self.target} general examples could be mixed in (answers "
                    f"cut off at replay.max_new_tokens {self.settings['max_new_tokens']} or longer than "
                    "data.max_length are not used); raise those settings or give replay.source a data file")
        if self.examples < self.target:
            return (f"replay: only {self.examples} of {self.target} general examples could be mixed in: "
                    f"{self.settings['source']} has no more that fit data.max_length")
        return None


@dataclass
class TrainingData:
    """Tokenized train/eval examples (for DPO: preference pairs) plus what was skipped and why."""

    train: list
    eval: list
    fingerprint: str
    skipped: dict[str, int] = field(default_factory=dict)
    dataset_id: str | None = None  # set when training on a `hone data prepare` dataset folder
    replay: ReplayMix = field(default_factory=lambda: ReplayMix(settings=None))

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
    return [render_chat(tokenizer, example.messages, example.tools) for example in load_chat_examples(path)]


def _sequences(item) -> list[RenderedExample]:
    return [item.chosen, item.rejected] if hasattr(item, "chosen") else [item]


def _problem(item, max_length: int) -> str | None:
    """Why a rendered example (or pair) cannot be trained on, as a `skipped` key; None when it can."""
    sequences = _sequences(item)
    if any(len(sequence) > max_length for sequence in sequences):
        return "longer_than_max_length"
    if any(sum(sequence.trained[1:]) == 0 for sequence in sequences):
        return "no_trained_tokens"
    return None


def _render_all(tokenizer, path: Path, max_length: int, skipped: dict[str, int], preferences: bool) -> list:
    rendered = []
    for item in _rendered(tokenizer, path, preferences):
        problem = _problem(item, max_length)
        if problem:
            skipped[problem] = skipped.get(problem, 0) + 1
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


def prepared_with_replay(path: Path) -> str | None:
    """The dataset id when `path` is a `hone data prepare` folder that already mixed replay in, else None."""
    if not is_dataset_dir(path):
        return None
    manifest = read_manifest(path)
    mixed = any(step.get("name") == "replay" for step in manifest.get("steps", []))
    return manifest.get("dataset_id") if mixed else None


def _run_here(make: Callable[[], Any]) -> Any:
    return make()


def _mix_replay(config: TrainConfig, tokenizer, train_count: int, *, on_main: Callable = _run_here,
               show_progress: bool = True) -> tuple[list[RenderedExample], ReplayMix]:
    """Rendered replay examples for a training split of `train_count` examples (`config.replay`), seeded with
    training.seed; only examples that fit data.max_length are used. `on_main` runs the generation (the base
    model answering, or reading its cached answers) once, on the main process, and hands the result to all."""
    from hone.data.curate.replay import replay_examples, replay_fingerprint

    settings = config.replay
    max_length = config.data.max_length

    def fits(example: Example) -> bool:
        return _problem(render_chat(tokenizer, example.messages), max_length) is None

    examples, report = on_main(lambda: replay_examples(settings, train_count, config.base_model,
                                                       config.training.seed, fits=fits,
                                                       show_progress=show_progress))
    counts = {key: value for key, value in report.counts.items() if key != "added"}
    mix = ReplayMix(settings=settings.model_dump(mode="json"), target=report.params["target"],
                    examples=len(examples), fingerprint=replay_fingerprint(examples) if examples else None,
                    counts=counts)
    return [render_chat(tokenizer, example.messages) for example in examples], mix


def _replay_for(config: TrainConfig, tokenizer, train_count: int, already_in: str | None, on_main: Callable,
                show_progress: bool) -> tuple[list[RenderedExample], ReplayMix]:
    """The replay to add to this run's training split, or none, with the reason when it is not the user's choice."""
    if config.method == "dpo":
        return [], ReplayMix(settings=None, note="method dpo trains on preference pairs: no replay mixed in")
    if not config.replay_enabled:
        return [], ReplayMix(settings=None)
    if already_in:
        return [], ReplayMix(settings=config.replay.model_dump(mode="json"),
                             note=f"not mixed in again: the dataset folder (dataset id {already_in}) already "
                             "holds replay from `hone data prepare`")
    return _mix_replay(config, tokenizer, train_count, on_main=on_main, show_progress=show_progress)


def load_training_data(config: TrainConfig, tokenizer, *, on_main: Callable = _run_here,
                       show_progress: bool = True) -> TrainingData:
    """Render every example once; too-long examples are skipped and counted, never silently cut. Replay
    (config.replay) is added to the training split after eval examples are held out; `on_main` runs its
    generation on one process of several (see `_mix_replay`)."""
    already_in = prepared_with_replay(config.data.train)
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
    replay, mix = _replay_for(config, tokenizer, len(train), already_in, on_main, show_progress)
    return TrainingData(train=train + replay, eval=evaluation, fingerprint=dataset_fingerprint(paths, config),
                        skipped=skipped, dataset_id=dataset_id, replay=mix)
