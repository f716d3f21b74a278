"""Validators a teacher's answer must pass before it becomes training data: a JSON Schema, a label set, a regular
expression, a maximum length and a Python function named in the config. Each failed check gives a reason; a check
that raises rejects the answer with the exception's message (the run goes on)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from hone.errors import HoneError
from hone.eval.judge import DEFAULT_CRITERIA, JudgeConfig

Check = Callable[[str, list[dict]], str | None]  # (answer, conversation) -> why it is rejected, or None
NamedCheck = tuple[str, Check]  # the name the example's lineage lists it under


class JudgeFilter(BaseModel):
    """The judge of `filters.judge`: where it is served, its rubric and the lowest score kept."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="OpenAI-compatible base URL, ending in /v1.")
    model: str
    api_key_env: str | None = None
    criteria: list[str] = Field(default_factory=lambda: list(DEFAULT_CRITERIA), min_length=1,
                                description="The rubric: what a good answer does.")
    min_score: int = Field(4, ge=1, le=5, description="The lowest 1-5 score kept.")
    retries: int = Field(2, ge=0, le=10)
    timeout_s: float = Field(60.0, gt=0)
    max_tokens: int = Field(300, ge=1)
    concurrency: int = Field(4, ge=1, le=64)

    def judge_config(self) -> JudgeConfig:
        """The same judge as `hone eval` runs it (its prompts, JSON shapes and retries)."""
        return JudgeConfig(url=self.url, model=self.model, api_key_env=self.api_key_env, criteria=self.criteria,
                           retries=self.retries, timeout_s=self.timeout_s, max_tokens=self.max_tokens,
                           concurrency=self.concurrency)


class FilterSettings(BaseModel):
    """The checks of `filters:` (each optional)."""

    model_config = ConfigDict(extra="forbid")

    json_schema: Path | None = Field(None, description="The answer must be JSON valid against this schema file.")
    labels: list[str] | None = Field(None, description="The answer (or its JSON field `label_field`) must be one.")
    label_field: str | None = None
    regex: str | None = Field(None, description="The answer must contain a match of this regular expression.")
    max_length: int | None = Field(None, ge=1, description="At most this many characters.")
    function: str | None = Field(None, description="module:function or file.py:function, called with (answer, "
                                 "messages); it returns True/None to keep, False or a reason to reject.")
    judge: JudgeFilter | None = Field(None, description="A model (best not the teacher) rates every kept answer "
                                      "1-5 against a rubric; answers below min_score are rejected.")


def _json(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError as error:
        raise _Rejected(f"not JSON ({error.msg})") from None


class _Rejected(Exception):
    pass


def _schema_check(path: Path) -> Check:
    import jsonschema

    schema = json.loads(path.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)

    def check(answer: str, _messages: list[dict]) -> str | None:
        error = next(iter(validator.iter_errors(_json(answer))), None)
        return None if error is None else error.message

    return check


def _label_check(labels: list[str], field: str | None) -> Check:
    def check(answer: str, _messages: list[dict]) -> str | None:
        value = answer.strip()
        if field is not None:
            found = _json(answer)
            value = found.get(field) if isinstance(found, dict) else None
        return None if value in labels else f"label {value!r} is not one of {', '.join(labels)}"

    return check


def _function_check(reference: str, config_file: Path | None) -> Check:
    target, _, name = reference.rpartition(":")
    if not target or not name:
        raise HoneError(f"filters.function {reference!r} must be module:function or file.py:function")
    if target.endswith(".py"):
        path = Path(target) if config_file is None or Path(target).is_absolute() else config_file.parent / target
        if not path.is_file():
            raise HoneError(f"filters.function: {path} does not exist")
        spec = importlib.util.spec_from_file_location(f"hone_filter_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    function = getattr(module, name, None)
    if not callable(function):
        raise HoneError(f"filters.function: {target} has no function {name!r}")

    def check(answer: str, messages: list[dict]) -> str | None:
        verdict = function(answer, messages)
        if verdict is None or verdict is True:
            return None
        return verdict if isinstance(verdict, str) else "rejected it"

    return check


def build_checks(settings: FilterSettings | None, config_file: Path | None = None) -> list[NamedCheck]:
    """The checks `settings` asks for with their names, after the check that the answer is not empty, in a fixed
    order (cheapest first); the judge is not one of them (it runs once per example, on the answer the checks
    kept)."""
    # an empty answer teaches the student to say nothing: it is never kept, whatever the filters
    checks: list[NamedCheck] = [("empty", lambda answer, _m: None if answer.strip() else "the answer is empty")]
    if settings is None:
        return checks
    if settings.max_length is not None:
        limit = settings.max_length
        checks.append(("max_length",
                       lambda answer, _m: None if len(answer) <= limit else f"longer than {limit} characters"))
    if settings.regex is not None:
        pattern = re.compile(settings.regex)
        checks.append(("regex",
                       lambda answer, _m: None if pattern.search(answer) else f"no match of {settings.regex!r}"))
    if settings.labels is not None:
        checks.append(("labels", _label_check(settings.labels, settings.label_field)))
    if settings.json_schema is not None:
        checks.append(("json_schema", _schema_check(settings.json_schema)))
    if settings.function is not None:
        checks.append((f"function:{settings.function.rpartition(':')[2]}",
                       _function_check(settings.function, config_file)))
    return checks


def rejections(checks: list[NamedCheck], answer: str, messages: list[dict]) -> list[str]:
    """Why the answer fails the checks, each reason after its check's name (empty: it passes); a check that raises
    is a rejection with its message."""
    reasons = []
    for name, check in checks:
        try:
            reason = check(answer, messages)
        except _Rejected as rejected:
            reason = str(rejected)
        except Exception as error:  # a user's validator must not stop the run
            reason = f"the check raised {type(error).__name__}: {error}"
        if reason:
            reasons.append(f"{name}: {reason}")
    return reasons


def label_of(answer: str, filters: FilterSettings) -> str:
    """The label an answer gives, read the way the labels filter reads it (the answer, or its JSON field)."""
    if filters.label_field is None:
        return answer.strip()
    try:
        found = json.loads(answer)
    except ValueError:
        return "(not JSON)"
    return str(found.get(filters.label_field)) if isinstance(found, dict) else "(not an object)"


def label_shares(answers: Sequence[str], filters: FilterSettings) -> dict[str, float]:
    """The share of each label among the answers."""
    counts = Counter(label_of(answer, filters) for answer in answers)
    return {label: counts[label] / len(answers) for label in sorted(counts)}
