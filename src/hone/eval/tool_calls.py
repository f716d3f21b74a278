"""Tool-call scores: did the reply call the right functions with the right arguments, or rightly call none?

Replies are read with `hone.data.render.parse_tool_calls`, the reader `hone serve` uses, so a call counts exactly
when serve would return it as one. The expected answer is the last assistant turn's `tool_calls` (none when it
only answers in text). Each score is a fraction in [0, 1], or None where it does not apply:

    tool_name_accuracy      the reply calls the expected functions, each as often (order aside); calls expected
    tool_arguments_exact    ... and every call's arguments equal the expected ones as parsed JSON; calls expected
    tool_argument_accuracy  share of the expected arguments (keys of every expected call) the reply gives with the
                            expected value, each expected call paired with the reply's call of that name that
                            agrees most; calls with arguments expected
    no_call_accuracy        the reply calls a tool exactly when the expected answer does; every tool example
    tool_call_parse_rate    every `<tool_call>` block of the reply is a call (`{"name": ..., "arguments": {...}}`);
                            replies that write a `<tool_call>` block
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
from scipy.optimize import linear_sum_assignment

from hone.data.render import TOOL_CALL_OPEN, parse_tool_calls

TOOL_METRICS = ("tool_name_accuracy", "tool_arguments_exact", "tool_argument_accuracy", "no_call_accuracy",
                "tool_call_parse_rate")

Call = tuple[str, dict]  # a function's name and its arguments as an object


def message_calls(message: dict) -> list[Call]:
    """The calls an assistant message (OpenAI form, `arguments` a JSON string or an object) makes."""
    calls = []
    for call in message.get("tool_calls") or []:
        arguments = call["function"]["arguments"]
        calls.append((call["function"]["name"], json.loads(arguments) if isinstance(arguments, str) else arguments))
    return calls


def reply_calls(text: str) -> tuple[list[Call], bool]:
    """The calls a reply makes, and whether every `<tool_call>` block in it is one (a block that is not stays in
    the reply's text, as in `hone serve`)."""
    content, calls = parse_tool_calls(text)
    return [(name, json.loads(arguments)) for name, arguments in calls], TOOL_CALL_OPEN not in content


def same_value(a, b) -> bool:
    """JSON equality: numbers by value (1 equals 1.0), but true is not 1; objects and arrays item by item."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[key], b[key]) for key in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _all_matched(predicted: list[Call], expected: list[Call]) -> bool:
    """Whether the calls are the same multiset: name and arguments (JSON equality is transitive, so greedy pairing
    finds a full pairing whenever one exists)."""
    left = list(predicted)
    for name, arguments in expected:
        match = next((i for i, (n, a) in enumerate(left) if n == name and same_value(a, arguments)), None)
        if match is None:
            return False
        left.pop(match)
    return not left


def _agreeing_keys(predicted: Call, expected: Call) -> int:
    if predicted[0] != expected[0]:
        return 0
    return sum(key in predicted[1] and same_value(predicted[1][key], value) for key, value in expected[1].items())


def argument_accuracy(predicted: list[Call], expected: list[Call]) -> float | None:
    """Share of the expected calls' argument keys given with the expected value, pairing each expected call with
    at most one call of the reply (the pairing that agrees most); None when no expected call has arguments."""
    total = sum(len(arguments) for _, arguments in expected)
    if not total:
        return None
    if not predicted:
        return 0.0
    agree = np.array([[_agreeing_keys(p, e) for p in predicted] for e in expected])
    rows, columns = linear_sum_assignment(agree, maximize=True)
    return float(agree[rows, columns].sum()) / total


def tool_call_scores(reply: str, expected: list[Call]) -> dict[str, float | None]:
    """Every tool-call score of one reply against the expected calls (empty: the answer calls nothing)."""
    predicted, parsed = reply_calls(reply)
    calls_expected = bool(expected)
    return {
        "tool_name_accuracy": float(Counter(n for n, _ in predicted) == Counter(n for n, _ in expected))
        if calls_expected else None,
        "tool_arguments_exact": float(_all_matched(predicted, expected)) if calls_expected else None,
        "tool_argument_accuracy": argument_accuracy(predicted, expected),
        "no_call_accuracy": float(bool(predicted) == calls_expected),
        "tool_call_parse_rate": float(parsed) if TOOL_CALL_OPEN in reply else None,
    }
