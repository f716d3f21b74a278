"""`validate_file` and `hone data validate`: each broken line reported where it is; exact token stats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hone.cli import app
from hone.data.render import count_tokens, render_chat
from hone.data.validate import validate_file
from hone.models import load_tokenizer

MAX_LENGTH = 64


def chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def clean_file(path: Path, count: int = 12) -> Path:
    return write_lines(path, [chat(f"order {i} status?", f"order {i} ships today") for i in range(count)])


LONG = chat("the quick brown fox jumps over the lazy dog " * 10, "ok")
USER, ASSISTANT = {"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}
BROKEN = [  # one line of each kind of breakage, numbered from 1
    chat("hello", "world"),                                                   # 1 valid
    "not json {",                                                             # 2
    [1, 2],                                                                   # 3
    {"msgs": []},                                                             # 4
    {"messages": "hello"},                                                    # 5
    {"messages": [{"role": "bot", "content": "hi"}, ASSISTANT]},              # 6
    {"messages": [{"role": "user", "content": ["hi"]}, ASSISTANT]},           # 7
    {"messages": [USER, {"role": "assistant", "content": " "}]},              # 8
    {"messages": [USER]},                                                     # 9
    chat("hello", "world"),                                                   # 10 duplicate of 1
    LONG,                                                                     # 11 too long
    "",                                                                       # 12 blank
    {"messages": [USER, ASSISTANT, {"role": "user", "content": "more?"}]},    # 13 ends with user
    chat("refund order", "done"),                                             # 14 valid
]
EXPECTED = [  # (line, field, severity, words in the message)
    (2, "", "error", "line 2 is not valid JSON"),
    (3, "", "error", "line 3 is an array, not a JSON object"),
    (4, "messages", "error", "missing key 'messages'"),
    (5, "messages", "error", "must be an array, got a string"),
    (6, "messages[0].role", "error", 'unknown role "bot"; allowed roles: system, user, assistant'),
    (7, "messages[0].content", "error", "must be a string, got an array"),
    (8, "messages[1].content", "error", "is empty"),
    (9, "messages", "error", "has no assistant message"),
    (10, "", "warning", "duplicate of line 1"),
    (11, "", "error", f"longer than max_length {MAX_LENGTH}"),
    (13, "messages[2].role", "error", "ends with a user message"),
]


def test_each_breakage_is_reported_at_its_line_and_field(tmp_path, tiny_model_dir):
    path = write_lines(tmp_path / "broken.jsonl", BROKEN)
    report = validate_file(path, model=str(tiny_model_dir), max_length=MAX_LENGTH)
    file_level, *problems = report.problems
    assert (file_level.line, file_level.severity) == (0, "warning")
    assert "only 4 usable example(s)" in file_level.message
    assert [(p.line, p.field, p.severity) for p in problems] == [(line, field, severity)
                                                                 for line, field, severity, _ in EXPECTED]
    for problem, (_, _, _, words) in zip(problems, EXPECTED, strict=True):
        assert words in problem.message
    length = count_tokens(load_tokenizer(str(tiny_model_dir)), LONG["messages"])
    assert f"is {length} tokens" in problems[9].message
    assert not report.ok
    assert report.stats["examples"] == 4  # lines 1, 10, 11 and 14: a warning or a length error keeps the line
    assert (report.stats["lines_read"], report.stats["blank_lines"]) == (13, 1)
    assert (report.stats["duplicates"], report.stats["too_long"]) == (1, 1)
    assert report.stats["max_tokens"] == length


def test_clean_file_has_exact_token_statistics(tmp_path, tiny_model_dir):
    path = clean_file(tmp_path / "clean.jsonl", count=20)
    report = validate_file(path, model=str(tiny_model_dir), max_length=MAX_LENGTH)
    assert report.ok and report.problems == []
    tokenizer = load_tokenizer(str(tiny_model_dir))
    rendered = [render_chat(tokenizer, json.loads(line)["messages"])
                for line in path.read_text().splitlines()]
    lengths = sorted(len(r) for r in rendered)
    stats = report.stats
    assert stats["examples"] == 20
    assert stats["total_tokens"] == sum(lengths)
    assert stats["trained_tokens"] == sum(r.num_trained for r in rendered) > 0
    assert stats["max_tokens"] == lengths[-1] and stats["p95_tokens"] == lengths[18]
    assert stats["mean_tokens"] == pytest.approx(sum(lengths) / 20, abs=0.05)
    assert (stats["without_system"], stats["without_user"]) == (20, 0)
    payload = report.to_dict()
    assert json.loads(json.dumps(payload)) == payload
    assert payload["counts"] == {"errors": 0, "warnings": 0} and payload["format"] == "chat"


def test_preference_pairs_count_prompt_with_each_output(tmp_path, tiny_model_dir):
    prompt = [{"role": "user", "content": "where is my order?"}]
    chosen = {"role": "assistant", "content": "it ships today"}
    rejected = {"role": "assistant", "content": "no"}
    record = {"input": {"messages": prompt}, "preferred_output": [chosen], "non_preferred_output": [rejected]}
    path = write_lines(tmp_path / "dpo.jsonl", [record])
    tokenizer = load_tokenizer(str(tiny_model_dir))
    with_chosen, with_rejected = (render_chat(tokenizer, [*prompt, reply]) for reply in (chosen, rejected))

    report = validate_file(path, model=str(tiny_model_dir), max_length=len(with_chosen) - 1)
    assert report.stats["total_tokens"] == len(with_chosen) + len(with_rejected)
    assert report.stats["trained_tokens"] == with_chosen.num_trained + with_rejected.num_trained
    assert [(p.line, p.field, p.severity) for p in report.errors] == [(1, "preferred_output", "error")]


def test_cli_json_is_one_object_and_exit_code_follows_errors(tmp_path, tiny_model_dir):
    broken = write_lines(tmp_path / "broken.jsonl", BROKEN)
    args = ["data", "validate", "--model", str(tiny_model_dir), "--max-length", str(MAX_LENGTH), "--json"]
    result = CliRunner().invoke(app, [*args, str(broken)])
    assert result.exit_code == 1, result.output
    payload = json.loads(result.stdout)
    assert payload["ok"] is False and payload["counts"]["errors"] == 10
    assert {"line": 6, "field": "messages[0].role", "severity": "error",
            "message": 'unknown role "bot"; allowed roles: system, user, assistant, tool'} in payload["problems"]

    clean = clean_file(tmp_path / "clean.jsonl")
    result = CliRunner().invoke(app, [*args, str(clean)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["stats"]["examples"] == 12


def test_cli_table_shows_problems_and_statistics(tmp_path, tiny_model_dir):
    broken = write_lines(tmp_path / "broken.jsonl", BROKEN)
    result = CliRunner().invoke(app, ["data", "validate", str(broken), "--model", str(tiny_model_dir),
                                      "--max-length", str(MAX_LENGTH)], terminal_width=200)
    assert result.exit_code == 1
    assert "messages[0].role" in result.stdout and "duplicate of line 1" in result.stdout
    assert "trained tokens" in result.stdout and "10 error(s)" in result.stdout


def test_cli_maps_csv_columns(tmp_path, tiny_model_dir):
    path = tmp_path / "qa.csv"
    path.write_text("question,answer\n" + "".join(f"order {i}?,ships today\n" for i in range(12)))
    result = CliRunner().invoke(app, ["data", "validate", str(path), "--model", str(tiny_model_dir), "--json",
                                      "--column", "prompt=question", "--column", "completion=answer"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["format"] == "csv"
