"""Shared handling of YAML settings files: read them, validate them, explain every problem by key.

Unknown keys are rejected with a "did you mean ..." suggestion instead of being silently ignored.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from hone.errors import HoneError

Settings = TypeVar("Settings", bound=BaseModel)

# Names other fine-tuning tools use for our settings, so their users get pointed at ours.
ALIASES = {
    "learning_rate": "lr", "num_epochs": "epochs", "num_train_epochs": "epochs",
    "micro_batch_size": "batch_size", "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum", "lr_scheduler": "scheduler",
    "lr_scheduler_type": "scheduler", "rank": "r", "lora_r": "r", "lora_alpha": "alpha",
    "lora_dropout": "dropout", "lora_target_modules": "target_modules", "sequence_len": "max_length",
    "max_seq_length": "max_length", "model": "base_model", "base_model_name_or_path": "base_model",
    "output": "out", "output_dir": "out", "test": "data", "test_file": "data",
}


def suggest(key: str, choices: list[str]) -> str | None:
    """The known key a mistyped or foreign key most likely means."""
    if ALIASES.get(key) in choices:
        return ALIASES[key]
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.6)
    return close[0] if close else None


def _keys_at(schema: type[BaseModel], path: list[str]) -> list[str]:
    """Field names of the (possibly nested) section of `schema` at `path`."""
    for part in path:
        annotation = schema.model_fields[part].annotation
        options = getattr(annotation, "__args__", (annotation,))
        schema = next(a for a in options if isinstance(a, type) and issubclass(a, BaseModel))
    return list(schema.model_fields)


def explain(error: dict, schema: type[BaseModel], source: str) -> str:
    """One line per problem: `source: dotted.key: what is wrong`."""
    location = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] != "extra_forbidden":
        return f"{source}: {location}: {error['msg'].removeprefix('Value error, ')}"
    *parent, key = [str(part) for part in error["loc"]]
    try:
        choices = _keys_at(schema, parent)
    except (KeyError, StopIteration):
        choices = []
    guess = suggest(key, choices)
    hint = f"did you mean '{guess}'?" if guess else f"known keys: {', '.join(choices)}"
    return f"{source}: {location}: unknown key; {hint}"


def validate(schema: type[Settings], raw: dict[str, Any], source: str, what: str) -> Settings:
    """Validate `raw` against `schema`; every problem is reported with its dotted key path."""
    try:
        return schema.model_validate(raw)
    except ValidationError as error:
        lines = [explain(e, schema, source) for e in error.errors()]
        raise HoneError(f"invalid {what}:\n  " + "\n  ".join(lines)) from None


def read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """The top-level mapping of a YAML settings file, or a clear error naming the file."""
    if not path.is_file():
        raise HoneError(f"{what} file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise HoneError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise HoneError(f"{path}: expected a mapping of settings at the top level")
    return raw


def resolve_relative(path: Path | None, settings_file: Path) -> Path | None:
    """A relative path that does not exist from here is taken relative to the settings file."""
    if path is None or path.is_absolute() or path.exists():
        return path
    return (settings_file.parent / path).resolve()


def check_regexes(patterns: list[str]) -> list[str]:
    """`patterns` unchanged when each compiles; else a ValueError naming the first that does not."""
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"regex {pattern!r} does not compile: {error}") from None
    return patterns
