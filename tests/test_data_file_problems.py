"""Files that are not plain JSON Lines: deep nesting, UTF-16/32, byte order marks, JSON arrays, odd values.

Each must end in a clear problem naming the line (or the file) and what to do, never in a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hone.cli import app
from hone.data.formats import read_dataset
from hone.errors import HoneError

ROWS = [{"prompt": f"where is order {i}?", "completion": f"order {i} ships today"} for i in range(3)]


def jsonl(rows: list) -> str:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)


def only_problem(path: Path) -> str:
    dataset = read_dataset(path)
    assert [(p.line, p.severity) for p in dataset.problems] == [(0, "error")], dataset.problems
    assert dataset.examples == []
    return dataset.problems[0].message


@pytest.mark.parametrize("nested", ["[" * 100_000, '{"a":' * 100_000, '{"messages": ' + "[" * 100_000])
def test_deeply_nested_line_is_one_error_and_the_other_lines_are_read(tmp_path, nested):
    path = tmp_path / "deep.jsonl"
    path.write_text(jsonl([ROWS[0], nested, ROWS[1]]))
    dataset = read_dataset(path)
    assert [(p.line, p.severity) for p in dataset.problems] == [(2, "error")]
    assert "line 2 is nested too deeply" in dataset.problems[0].message
    assert [e.line for e in dataset.examples] == [1, 3]


def test_cli_reports_deep_nesting_without_a_traceback(tmp_path, tiny_model_dir):
    path = tmp_path / "deep.jsonl"
    path.write_text(jsonl([ROWS[0], "[" * 100_000, ROWS[1]]))
    result = CliRunner().invoke(app, ["data", "validate", str(path), "--model", str(tiny_model_dir), "--json"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit | None), result.exception
    problems = json.loads(result.stdout)["problems"]
    assert {"line": 2, "field": "", "severity": "error"} == {k: problems[1][k] for k in ("line", "field", "severity")}
    assert "nested too deeply" in problems[1]["message"]


@pytest.mark.parametrize(("encoding", "iconv_name"), [
    ("utf-16", "UTF-16"), ("utf-16-le", "UTF-16LE"), ("utf-16-be", "UTF-16BE"),
    ("utf-32", "UTF-32"), ("utf-32-le", "UTF-32LE"), ("utf-32-be", "UTF-32BE"),
])
def test_utf16_and_utf32_files_are_named_with_the_command_that_converts_them(tmp_path, encoding, iconv_name):
    path = tmp_path / "data.jsonl"
    path.write_bytes(jsonl(ROWS).encode(encoding))  # "utf-16"/"utf-32" write a byte order mark
    message = only_problem(path)
    family = iconv_name[:6]
    assert message.startswith(f"the file is {family} encoded; save it as UTF-8")
    assert f"iconv -f {iconv_name} -t UTF-8 {path} > {tmp_path / 'data.utf8.jsonl'}" in message
    assert "byte 1" not in message


def test_utf16_csv_names_the_encoding(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_bytes("prompt,completion\nhi,hello\n".encode("utf-16"))
    with pytest.raises(HoneError, match="the file is UTF-16 encoded; save it as UTF-8"):
        read_dataset(path)


def test_utf8_byte_order_mark_is_accepted_silently(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + jsonl(ROWS).encode())
    dataset = read_dataset(path)
    assert dataset.problems == [] and len(dataset.examples) == 3
    assert dataset.examples[0].messages[0]["content"] == "where is order 0?"
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbfprompt,completion\nhi,hello\n")
    assert read_dataset(tmp_path / "bom.csv").problems == []
    (tmp_path / "only-bom.jsonl").write_bytes(b"\xef\xbb\xbf\n")
    with pytest.raises(HoneError, match="dataset file is empty"):
        read_dataset(tmp_path / "only-bom.jsonl")


@pytest.mark.parametrize(("name", "indent", "converted"), [
    ("export.json", 2, "export.jsonl"), ("export.jsonl", 2, "export.lines.jsonl"),
    ("export.jsonl", None, "export.lines.jsonl"),
])
def test_json_array_is_one_error_that_shows_how_to_convert_it(tmp_path, name, indent, converted):
    path = tmp_path / name
    path.write_text(json.dumps(ROWS, indent=indent) + "\n")
    assert len(path.read_text().splitlines()) == (1 if indent is None else 14)
    message = only_problem(path)
    assert message.startswith("this is a JSON array, write one object per line (JSON Lines)")
    assert f"jq -c '.[]' {path} > {tmp_path / converted}" in message


def test_broken_pretty_printed_array_is_still_one_error(tmp_path):
    path = tmp_path / "export.json"
    path.write_text(json.dumps(ROWS, indent=2).replace("}\n]", "},\n]"))  # a trailing comma
    assert "fix its JSON" in only_problem(path)


def test_arrays_on_lines_of_a_jsonl_file_are_still_reported_per_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(jsonl([[1, 2], ROWS[0], [ROWS[1]]]))
    dataset = read_dataset(path)
    assert [(p.line, p.message.split(",")[0]) for p in dataset.problems] == [
        (1, "line 1 is an array"), (3, "line 3 is an array")]
    assert [e.line for e in dataset.examples] == [2]


def test_values_no_tokenizer_or_file_can_hold_are_line_errors(tmp_path):
    lone_surrogate = '{"prompt": "caf\\ud800", "completion": "ok"}'
    huge_number = '{"prompt": "hi", "completion": "ok", "id": ' + "9" * 5000 + "}"
    odd_role = json.dumps({"messages": [{"role": "\ud83d" + "x" * 500, "content": "hi"}]})
    path = tmp_path / "data.jsonl"
    path.write_text(jsonl([ROWS[0], lone_surrogate, huge_number]))
    dataset = read_dataset(path)
    assert [(p.line, p.field) for p in dataset.problems] == [(2, "prompt"), (3, "")]
    assert "unpaired surrogate" in dataset.problems[0].message
    assert "number too long" in dataset.problems[1].message
    path.write_text(jsonl([odd_role]))
    message = read_dataset(path).problems[0].message
    assert message.startswith('unknown role "\\ud83dxxx') and len(message) < 150
    message.encode("utf-8")  # printable as it is
