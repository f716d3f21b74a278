"""Validators a teacher's answer must pass before it becomes training data: a JSON Schema, a label set, a regular
expression, a maximum length and a Python function named in the config. Each failed check gives a reason; a check
that raises rejects the answer with the exception's message (the run goes on)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from hone.errors import HoneError

Check = Callable[[str, list[dict]], str | None]  # (answer, conversation) -> why it is rejected, or None


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
        return None if error is None else f"json_schema: {error.message}"

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
        return f"{name}: {verdict}" if isinstance(verdict, str) else f"{name} rejected it"

    return check


def build_checks(settings: FilterSettings | None, config_file: Path | None = None) -> list[Check]:
    """The checks `settings` asks for, in a fixed order (cheapest first)."""
    if settings is None:
        return []
    checks: list[Check] = []
    if settings.max_length is not None:
        limit = settings.max_length
        checks.append(lambda answer, _m: None if len(answer) <= limit else f"longer than {limit} characters")
    if settings.regex is not None:
        pattern = re.compile(settings.regex)
        checks.append(lambda answer, _m: None if pattern.search(answer) else f"no match of {settings.regex!r}")
    if settings.labels is not None:
        checks.append(_label_check(settings.labels, settings.label_field))
    if settings.json_schema is not None:
        checks.append(_schema_check(settings.json_schema))
    if settings.function is not None:
        checks.append(_function_check(settings.function, config_file))
    return checks


def rejections(checks: list[Check], answer: str, messages: list[dict]) -> list[str]:
    """Why the answer fails the checks (empty: it passes); a check that raises is a rejection with its message."""
    reasons = []
    for check in checks:
        try:
            reason = check(answer, messages)
        except _Rejected as rejected:
            reason = str(rejected)
        except Exception as error:  # a user's validator must not stop the run
            reason = f"the check raised {type(error).__name__}: {error}"
        if reason:
            reasons.append(reason)
    return reasons
