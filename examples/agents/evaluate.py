"""Score the router through a running `hone serve`, as an application sees it: right function, right arguments.

Each test line's prompt (system + user) goes to each served model two ways:

    constrained   the request carries `tools` with tool_choice "auto": the server renders the tool list and holds
                  the reply to text or calls that match the functions' JSON Schemas (grammar-constrained decoding)
    plain         no `tools`: the same tool list is written into the system prompt by hand (hone's default
                  format, `hone.data.render.default_tool_turns`, so the model sees the very same prompt) and the
                  calls are read out of the free-running reply with the server's own reader

An example is right when the reply makes exactly the expected call (same function, arguments equal as parsed
JSON), or makes no call when the expected answer is text. Per model and mode the script prints that accuracy with
a 95% bootstrap CI (10,000 seeded resamples of the test examples), the name accuracy and the argument-exact
accuracy on examples that expect a call, the no-call accuracy, and the share of replies whose `<tool_call>`
blocks all parse; then each candidate's change against the base with the same prompt, with a paired bootstrap CI.

    python examples/agents/evaluate.py --base-url http://127.0.0.1:8000/v1 --models base router --data test.jsonl
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from openai import OpenAI

from hone.data.render import TOOL_CALL_OPEN, default_tool_turns, parse_tool_calls

MODES = ("constrained", "plain")
RESAMPLES = 10_000


@dataclass
class Scored:
    """One reply and how it scores against the expected answer."""

    expected: list[tuple[str, dict]]
    calls: list[tuple[str, dict]]
    text: str
    parses: bool  # every <tool_call> block in the reply is a call

    @property
    def right(self) -> bool:
        return self.calls == self.expected

    @property
    def right_name(self) -> bool:
        return [name for name, _ in self.calls] == [name for name, _ in self.expected]


def expected_calls(line: dict) -> list[tuple[str, dict]]:
    """The calls the test line's last assistant turn makes (none for a text answer)."""
    return [(call["function"]["name"], json.loads(call["function"]["arguments"]))
            for call in line["messages"][-1].get("tool_calls") or []]


def ask(client: OpenAI, model: str, mode: str, line: dict, max_tokens: int) -> Scored:
    """One test line to one model in one mode, scored."""
    prompt = line["messages"][:-1]
    if mode == "constrained":
        reply = client.chat.completions.create(model=model, messages=prompt, tools=line["tools"], tool_choice="auto",
                                               temperature=0, max_tokens=max_tokens).choices[0].message
        calls = [(call.function.name, json.loads(call.function.arguments)) for call in reply.tool_calls or []]
        text = reply.content or ""
    else:
        reply = client.chat.completions.create(model=model, messages=default_tool_turns(prompt, line["tools"]),
                                               temperature=0, max_tokens=max_tokens).choices[0].message
        text, found = parse_tool_calls(reply.content or "")
        calls = [(name, json.loads(arguments)) for name, arguments in found]
    return Scored(expected_calls(line), calls, text, TOOL_CALL_OPEN not in text)


def bootstrap_ci(values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap CI of the mean of `values` (per-example scores, or paired differences)."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(RESAMPLES, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def summarize(scored: list[Scored]) -> dict:
    """The candidate's figures, in percent."""
    right = np.array([s.right for s in scored], dtype=float)
    with_call = [s for s in scored if s.expected]
    low, high = bootstrap_ci(right)
    return {"accuracy": 100 * right.mean(), "ci": [100 * low, 100 * high], "n": len(scored),
            "tool_name_accuracy": 100 * np.mean([s.right_name for s in with_call]),
            "tool_arguments_exact": 100 * np.mean([s.right for s in with_call]),
            "no_call_accuracy": 100 * np.mean([bool(s.calls) == bool(s.expected) for s in scored]),
            "tool_call_parse_rate": 100 * np.mean([s.parses for s in scored])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", default="none")
    parser.add_argument("--models", nargs="+", default=["base", "router"], help="the first is the baseline")
    parser.add_argument("--data", type=Path, default=Path(__file__).parent / "test.jsonl")
    parser.add_argument("--out", type=Path, help="write every reply and figure here as JSON")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (the server batches them)")
    args = parser.parse_args()
    lines = [json.loads(text) for text in args.data.read_text().splitlines() if text.strip()]
    client = OpenAI(base_url=args.base_url, api_key=args.api_key, timeout=600)
    results: dict[str, list[Scored]] = {}
    with ThreadPoolExecutor(args.concurrency) as pool:
        for model in args.models:
            for mode in MODES:
                results[f"{model}/{mode}"] = list(pool.map(
                    lambda line, model=model, mode=mode: ask(client, model, mode, line, args.max_tokens), lines))
    figures = {name: summarize(scored) for name, scored in results.items()}
    print(f"{'candidate':<22} {'exact call %':>13} {'95% CI':>15} {'name %':>7} {'args %':>7} {'no-call %':>9} "
          f"{'parses %':>8}")
    for name, f in figures.items():
        ci = f"[{f['ci'][0]:.1f}, {f['ci'][1]:.1f}]"
        print(f"{name:<22} {f['accuracy']:>13.1f} {ci:>15} "
              f"{f['tool_name_accuracy']:>7.1f} {f['tool_arguments_exact']:>7.1f} {f['no_call_accuracy']:>9.1f} "
              f"{f['tool_call_parse_rate']:>8.1f}")
    baseline = args.models[0]
    for name, scored in results.items():
        model, mode = name.split("/")
        if model == baseline:
            continue
        reference = results[f"{baseline}/{mode}"]
        delta = np.array([a.right for a in scored], dtype=float) - np.array([b.right for b in reference], dtype=float)
        low, high = bootstrap_ci(delta)
        figures[name]["change_vs_base"] = [100 * delta.mean(), 100 * low, 100 * high]
        print(f"{name} vs {baseline}/{mode}: {100 * delta.mean():+.1f} points (95% CI [{100 * low:+.1f}, "
              f"{100 * high:+.1f}])")
    if args.out:
        args.out.write_text(json.dumps({"figures": figures, "replies": {
            name: [asdict(s) for s in scored] for name, scored in results.items()}}, indent=1))


if __name__ == "__main__":
    main()
