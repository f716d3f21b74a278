"""Property-based fuzzing of reading and validating data files: whatever a file holds, the user gets problems
(or, for a missing or empty file, a HoneError), never a traceback."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hone.data import validate
from hone.data.formats import read_dataset
from hone.data.validate import validate_file
from hone.errors import HoneError
from hone.models import load_tokenizer

FUZZ = settings(max_examples=200, deadline=None)
KEYS = ["messages", "role", "content", "weight", "prompt", "completion", "system", "instruction", "input",
        "output", "conversations", "from", "value", "preferred_output", "non_preferred_output"]
ROLES = ["system", "user", "assistant", "human", "gpt", "bot"]
ODD_TEXT = ["\ud800", "\udfff", "\x00", "\u2028", "\ufeff", "\u202e", "e\u0301", "\U0001f600", "<|im_end|>", "\r"]


@dataclass(frozen=True)
class Raw:
    """JSON text written as it is: what json.dumps will not write (5000-digit numbers, deep nesting)."""

    text: str


def to_json(value, ascii_only: bool) -> str:
    """json.dumps, except that a Raw value is written as its text."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, list):
        return "[" + ", ".join(to_json(item, ascii_only) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=ascii_only)}: {to_json(v, ascii_only)}"
                               for k, v in value.items()) + "}"
    return json.dumps(value, ensure_ascii=ascii_only)


# Any code point (unpaired surrogates too), plus the characters that break tokenizers and terminals most.
texts = st.text(st.characters(exclude_categories=())) | st.lists(st.sampled_from(ODD_TEXT) | st.text(max_size=3),
                                                                 max_size=6).map("".join)
huge_numbers = st.integers(4000, 6000).map(lambda digits: Raw("9" * digits)) | st.integers(-10**300, 10**300)
deep = st.integers(500, 5000).map(lambda depth: Raw("[" * depth + "]" * depth))
scalars = (st.none() | st.booleans() | st.integers() | huge_numbers | deep
           | st.floats(allow_nan=True, allow_infinity=True) | texts | st.sampled_from(ROLES))
keys = st.sampled_from(KEYS) | texts
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(keys, inner, max_size=5), max_leaves=25)
message = st.fixed_dictionaries({"role": st.sampled_from(ROLES), "content": texts},
                                optional={"weight": scalars})
# Well-formed records with odd text reach the tokenizer; objects of the formats' keys reach every per-field check.
records = (st.fixed_dictionaries({"prompt": texts, "completion": texts})
           | st.fixed_dictionaries({"messages": st.lists(message, max_size=4)})
           | st.dictionaries(keys, json_values, min_size=1, max_size=5))
lines = st.lists(records | json_values, min_size=1, max_size=6)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    """The tiny model, its tokenizer loaded once: the fuzzing is about the data, not about loading."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(validate, "load_tokenizer", cache(load_tokenizer))
        yield str(tiny_model_dir)


@pytest.fixture(scope="module")
def path(tmp_path_factory) -> Path:
    """The file each example is written to, in turn."""
    return tmp_path_factory.mktemp("fuzz") / "data.jsonl"


def check(path: Path, data: bytes, model: str) -> None:
    """Reading and validating give problems with a line and a message; a HoneError only for an empty file."""
    path.write_bytes(data)
    try:
        dataset = read_dataset(path)
        report = validate_file(path, model=model, max_length=64)
    except HoneError as error:
        assert not path.read_bytes().removeprefix(b"\xef\xbb\xbf").strip(), error
        assert "dataset file is empty" in str(error)
        return
    for problem in [*dataset.problems, *report.problems]:
        assert problem.line >= 0 and problem.message
        problem.message.encode("utf-8")  # printable
    json.dumps(report.to_dict())  # what --json prints


@FUZZ
@given(data=st.lists(st.binary(max_size=100) | st.sampled_from([b"[" * 5000, b"\xff\xfe", b"\xef\xbb\xbf", b"\n"]),
                     max_size=6).map(b"".join))
def test_arbitrary_bytes_never_raise(data, path, model):
    check(path, data, model)


@FUZZ
@given(values=lines, separator=st.sampled_from(["\n", "\r\n"]), ascii_only=st.booleans())
def test_arbitrary_json_lines_never_raise(values, separator, ascii_only, path, model):
    text = separator.join(to_json(value, ascii_only) for value in values) + separator
    check(path, text.encode("utf-8", "surrogatepass"), model)


def test_missing_file_is_a_hone_error(tmp_path, tiny_model_dir):
    with pytest.raises(HoneError, match="dataset file not found"):
        validate_file(tmp_path / "absent.jsonl", model=str(tiny_model_dir))
