"""Every accepted dataset format reads into one canonical chat form; bad input is reported, not raised."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hone.data.formats import (
    Example,
    PreferenceExample,
    load_chat_examples,
    load_preference_examples,
    read_dataset,
)
from hone.errors import HoneError

CANONICAL = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Where is my order?"},
    {"role": "assistant", "content": "It ships today."},
]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def read_one(path: Path, **kwargs) -> Example:
    dataset = read_dataset(path, **kwargs)
    assert dataset.problems == []
    assert len(dataset.examples) == 1
    return dataset.examples[0]


def test_openai_chat_keeps_messages_and_weights(tmp_path):
    messages = [*CANONICAL[:2], {"role": "assistant", "content": "Checking.", "weight": 0},
                {"role": "user", "content": "Thanks"}, {"role": "assistant", "content": "It ships today."}]
    example = read_one(write_jsonl(tmp_path / "chat.jsonl", [{"messages": messages}]))
    assert example.messages == messages
    assert (example.format, example.line, example.source) == ("chat", 1, str(tmp_path / "chat.jsonl"))


def test_prompt_completion_becomes_user_and_assistant_turns(tmp_path):
    record = {"prompt": "Where is my order?", "completion": "It ships today.", "system": "Be brief."}
    example = read_one(write_jsonl(tmp_path / "pc.jsonl", [record]))
    assert example.messages == CANONICAL
    assert example.format == "prompt_completion"


def test_alpaca_joins_instruction_and_input_with_a_blank_line(tmp_path):
    records = [{"instruction": "Summarise.", "input": "A long text.", "output": "Short."},
               {"instruction": "Where is my order?", "output": "It ships today.", "system": "Be brief."}]
    dataset = read_dataset(write_jsonl(tmp_path / "alpaca.jsonl", records))
    assert dataset.format == "alpaca" and dataset.problems == []
    assert dataset.examples[0].messages == [{"role": "user", "content": "Summarise.\n\nA long text."},
                                            {"role": "assistant", "content": "Short."}]
    assert dataset.examples[1].messages == CANONICAL


def test_sharegpt_maps_from_and_value(tmp_path):
    record = {"conversations": [{"from": "system", "value": "Be brief."},
                                {"from": "human", "value": "Where is my order?"},
                                {"from": "gpt", "value": "It ships today."}]}
    example = read_one(write_jsonl(tmp_path / "sharegpt.jsonl", [record]))
    assert example.messages == CANONICAL
    assert example.format == "sharegpt"


def test_dpo_reads_prompt_chosen_and_rejected(tmp_path):
    record = {"input": {"messages": CANONICAL[:2]},
              "preferred_output": [{"role": "assistant", "content": "It ships today."}],
              "non_preferred_output": [{"role": "assistant", "content": "No idea."}]}
    path = write_jsonl(tmp_path / "dpo.jsonl", [record])
    dataset = read_dataset(path)
    assert dataset.format == "dpo" and dataset.problems == []
    assert dataset.examples == [PreferenceExample(prompt=CANONICAL[:2], chosen=CANONICAL[2],
                                                  rejected={"role": "assistant", "content": "No idea."},
                                                  source=str(path), line=1)]
    assert load_preference_examples(path) == dataset.examples
    with pytest.raises(HoneError, match="holds preference pairs"):
        load_chat_examples(path)


def test_dpo_problems_name_the_output_field(tmp_path):
    record = {"input": {"messages": CANONICAL[2:]},
              "preferred_output": [{"role": "user", "content": "x"}],
              "non_preferred_output": []}
    dataset = read_dataset(write_jsonl(tmp_path / "dpo.jsonl", [record]))
    found = {(p.field, p.severity) for p in dataset.problems}
    assert found == {("input.messages[0].role", "error"), ("preferred_output[0].role", "error"),
                      ("non_preferred_output", "error")}
    assert dataset.examples == []


def test_csv_with_column_map_and_default_columns(tmp_path):
    mapped = tmp_path / "mapped.csv"
    mapped.write_text('sys,question,answer\nBe brief.,Where is my order?,It ships today.\n'
                      ',"Two,\nlines",ok\n')
    dataset = read_dataset(mapped, column_map={"prompt": "question", "completion": "answer", "system": "sys"})
    assert dataset.format == "csv" and dataset.problems == []
    assert dataset.examples[0].messages == CANONICAL
    assert dataset.examples[0].line == 2
    assert dataset.examples[1].messages == [{"role": "user", "content": "Two,\nlines"},
                                            {"role": "assistant", "content": "ok"}]
    assert dataset.examples[1].line == 3

    default = tmp_path / "default.csv"
    default.write_text("instruction,input,output\nSummarise.,A long text.,Short.\n\nSay hi.,,hi\n")
    dataset = read_dataset(default)
    assert [e.messages[0]["content"] for e in dataset.examples] == ["Summarise.\n\nA long text.", "Say hi."]
    assert (dataset.lines_read, dataset.blank_lines) == (2, 1)


def test_csv_problems_name_the_users_column_and_row_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("question,answer\nfine,ok\nno answer,\ntoo,many,fields\n")
    dataset = read_dataset(path, column_map={"prompt": "question", "completion": "answer"})
    assert [(p.line, p.field) for p in dataset.errors] == [(3, "answer"), (4, "")]
    assert len(dataset.examples) == 1
    with pytest.raises(HoneError, match="has neither prompt/completion nor instruction/output columns"):
        read_dataset(path)  # default mapping finds no prompt/completion columns
    with pytest.raises(HoneError, match="column 'q' \\(for prompt\\) is not in the header"):
        read_dataset(path, column_map={"prompt": "q", "completion": "answer"})


def test_missing_and_empty_files_raise_naming_the_path(tmp_path):
    with pytest.raises(HoneError, match="not found: .*nope.jsonl"):
        read_dataset(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    with pytest.raises(HoneError, match="empty: .*empty.jsonl"):
        read_dataset(tmp_path / "empty.jsonl")


def test_format_is_detected_from_the_first_valid_line_and_others_are_errors(tmp_path):
    records = ["not json", {"prompt": "a", "completion": "b"}, {"messages": CANONICAL}, "", {"other": 1}]
    dataset = read_dataset(write_jsonl(tmp_path / "mixed.jsonl", records))
    assert dataset.format == "prompt_completion"
    found = [(p.line, p.field) for p in dataset.problems]
    assert found == [(1, ""), (3, ""), (5, "prompt"), (5, "completion")]
    assert "chat format but the file is prompt_completion format (detected from line 2)" in \
        dataset.problems[1].message
    assert (dataset.lines_read, dataset.blank_lines, len(dataset.examples)) == (4, 1, 1)


def test_load_chat_examples_lists_the_problems(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"messages": CANONICAL},
                                                {"messages": [{"role": "bot", "content": "x"}]}])
    with pytest.raises(HoneError) as raised:
        load_chat_examples(path)
    assert f"{path}:2: messages[0].role: unknown role \"bot\"; allowed roles: system, user, assistant" in \
        str(raised.value)
    ok = write_jsonl(tmp_path / "ok.jsonl", [{"messages": CANONICAL}] * 2)
    assert [e.messages for e in load_chat_examples(ok)] == [CANONICAL, CANONICAL]


def test_weight_rules_and_unknown_keys(tmp_path):
    user, assistant = {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}
    records = [{"messages": [{**user, "weight": 1}, assistant]},
               {"messages": [user, {**assistant, "weight": 2}]},
               {"messages": [user, {**assistant, "weight": 0}]},
               {"messages": [user, {**assistant, "name": "bob"}]}]
    dataset = read_dataset(write_jsonl(tmp_path / "w.jsonl", records))
    assert [(p.line, p.field, p.severity) for p in dataset.problems] == [
        (1, "messages[0].weight", "error"), (2, "messages[1].weight", "error"),
        (3, "messages", "warning"), (4, "messages[1].name", "warning")]
    assert [e.line for e in dataset.examples] == [3, 4]
