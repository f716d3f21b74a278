"""The bundled forgetting probes load with hone's own reader and have the promised size and shape."""

from __future__ import annotations

import json
from collections import Counter
from importlib import resources

import pytest

from hone.data.formats import load_chat_examples, read_dataset

PROBES = resources.files("hone.eval") / "probes"
QA = PROBES / "general_qa.jsonl"
TEXT = PROBES / "general_text.txt"
CATEGORIES = {"facts", "math", "definitions", "language", "reasoning", "instructions"}


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return [json.loads(line) for line in QA.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_qa_loads_with_the_chat_loader():
    with resources.as_file(QA) as path:
        examples = load_chat_examples(path)
        problems = read_dataset(path).problems
    assert len(examples) >= 120
    assert problems == []  # not even a warning: the extra "category" key is ignored quietly
    for example in examples:
        assert [m["role"] for m in example.messages] == ["user", "assistant"]
        assert all(m["content"].strip() for m in example.messages)


def test_qa_categories(records):
    counts = Counter(r["category"] for r in records)
    assert set(counts) == CATEGORIES
    assert len(counts) >= 6
    assert all(n >= 15 for n in counts.values()), counts


def test_qa_has_no_duplicate_questions(records):
    questions = [" ".join(r["messages"][0]["content"].lower().split()) for r in records]
    duplicates = [q for q, n in Counter(questions).items() if n > 1]
    assert not duplicates


def test_math_references_are_numbers(records):
    for r in records:
        if r["category"] == "math":
            reference = r["messages"][1]["content"]
            float(reference)  # raises ValueError for anything but a plain number
            assert reference.strip() == reference


def test_short_references(records):
    for r in records:
        reference = r["messages"][1]["content"]
        limit = 40 if r["category"] == "definitions" else 12
        assert len(reference.split()) <= limit, reference


def test_general_text_size():
    text = TEXT.read_text(encoding="utf-8")
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    assert len(text.split()) >= 2500
    assert len(paragraphs) >= 15


def test_probes_are_not_among_the_replay_prompts_training_can_mix_in(records):
    replay = resources.files("hone.data.curate") / "general_prompts.jsonl"
    mixed_in = {json.loads(line)["prompt"].strip().lower() for line in replay.read_text().splitlines()}
    asked = {record["messages"][0]["content"].strip().lower() for record in records}
    assert not asked & mixed_in  # a probe trained on through replay would hide forgetting
