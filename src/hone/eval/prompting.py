"""What each candidate is shown: the test prompt, optionally preceded by k-shot examples from the training
set, and optionally augmented with retrieved training examples or document passages (RAG).

Demonstrations are inserted as earlier user/assistant turns after any system message, the way a
developer writes a few-shot chat prompt. Document passages are retrieved and put into the prompt exactly as
`hone serve` does (`hone.retrieval.prompt`), from the same kind of index, so eval measures what is served.
"""

from __future__ import annotations

import csv
import io
import json
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hone.data.render import render_tool_call, uses_tools
from hone.errors import HoneError
from hone.eval.tool_calls import message_calls
from hone.retrieval.prompt import rag_messages, retrieval_query

# Keys that hold the conversation in one of the chat formats; every other top-level key is metadata.
FORMAT_KEYS = frozenset({"messages", "conversations", "prompt", "completion", "system", "instruction", "input",
                         "output", "preferred_output", "non_preferred_output", "metadata"})


@dataclass
class EvalCase:
    """One conversation split into the prompt (all but the last turn) and the reference reply, with the
    metadata its line carries (region, language, segment ...).

    A conversation with tools keeps them (`tools`, shown to the model as the chat template or hone's default
    format lists them) and the calls its answer makes (`expected_calls`: empty when it answers in text; None
    without tools). Its `reference` is the answer as the model writes it: the text, then each call in hone's
    default format."""

    prompt: list[dict]
    reference: str
    metadata: dict[str, Any] = field(default_factory=dict)
    tools: list[dict] | None = None
    parallel_tool_calls: bool | None = None
    expected_calls: list[tuple[str, dict]] | None = None
    answer: dict | None = None  # the last assistant turn as in the file (its calls too), for reference perplexity

    @property
    def answer_turn(self) -> dict:
        """The reference as an assistant turn: the file's, with its calls, or one made of the reference text."""
        return self.answer or {"role": "assistant", "content": self.reference}


def _jsonl_metadata(text: str) -> dict[int, dict]:
    """Per line number: the line's keys outside the chat format, then its `metadata` object (which wins)."""
    found = {}
    for number, line in enumerate(text.split("\n"), start=1):
        try:
            record = json.loads(line) if line.strip() else None
        except ValueError:
            continue  # the format reader has already refused such a file
        if isinstance(record, dict):
            nested = record.get("metadata")
            found[number] = ({k: v for k, v in record.items() if k not in FORMAT_KEYS}
                             | (nested if isinstance(nested, dict) else {}))
    return found


def _csv_metadata(text: str) -> dict[int, dict]:
    """Per starting line number: the row's columns that are not chat fields."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, [])
    extra = [i for i, name in enumerate(header) if name not in FORMAT_KEYS]
    found, start = {}, reader.line_num + 1
    for row in reader:
        if len(row) == len(header):
            found[start] = {header[i]: row[i] for i in extra}
        start = reader.line_num + 1
    return found


def read_metadata(path: Path) -> dict[int, dict]:
    """The metadata of every example of a dataset file, by the line number the format reader gives it."""
    text = Path(path).read_bytes().decode("utf-8-sig", errors="replace")
    return _csv_metadata(text) if Path(path).suffix.lower() == ".csv" else _jsonl_metadata(text)


def load_cases(path: Path, limit: int | None = None, what: str = "test file") -> list[EvalCase]:
    """The first `limit` conversations of a chat file, each split into prompt and reference reply, keeping
    each line's metadata (extra top-level keys, or a `metadata` object)."""
    from hone.data.formats import load_chat_examples

    cases = []
    examples = load_chat_examples(path)[:limit]
    metadata = read_metadata(path) if examples else {}
    for example in examples:
        messages = example.messages
        if len(messages) < 2 or messages[-1]["role"] != "assistant":
            raise HoneError(f"{path}:{example.line}: the {what}'s conversation needs a prompt followed by the "
                            "expected assistant reply",
                            hint="put the user message (and any system message) before the expected reply")
        cases.append(_case(example, metadata.get(example.line, {})))
    if not cases:
        raise HoneError(f"{path} holds no conversations", hint=f"give a {what} with at least one example")
    return cases


def _case(example, metadata: dict) -> EvalCase:
    """An Example (hone.data.formats) as prompt and reference, keeping tool calls, call ids and tools."""
    *prompt, answer = [{key: m[key] for key in ("role", "content", "tool_calls", "tool_call_id") if key in m}
                       for m in example.messages]
    if not uses_tools(example.messages, example.tools):
        return EvalCase(prompt=prompt, reference=answer["content"], metadata=metadata)
    calls = answer.get("tool_calls") or []
    reference = "\n".join(([answer["content"]] if answer["content"] else []) + [render_tool_call(c) for c in calls])
    return EvalCase(prompt=prompt, reference=reference, metadata=metadata, tools=example.tools,
                    parallel_tool_calls=example.parallel_tool_calls, expected_calls=message_calls(answer),
                    answer=answer)


def _insert_after_system(prompt: list[dict], turns: list[dict]) -> list[dict]:
    head = 1 if prompt and prompt[0]["role"] == "system" else 0
    return prompt[:head] + turns + prompt[head:]


def demonstration_turns(examples: list[EvalCase]) -> list[dict]:
    """Training examples as user/assistant turn pairs (their system messages are left out)."""
    turns = []
    for example in examples:
        turns += [m for m in example.prompt if m["role"] != "system"]
        turns.append({"role": "assistant", "content": example.reference})
    return turns


class PromptBuilder:
    """Builds each candidate's prompts; retrieval indexes are built once and shared by candidates."""

    def __init__(self, train: list[EvalCase] | None, docs: Path | None, seed: int = 0):
        self.train = train
        self.docs = docs
        self.seed = seed
        self._indexes: dict[str, object] = {}

    def fixed_shots(self, k: int) -> list[EvalCase]:
        """k training examples drawn once with the run's seed: every test prompt sees the same demo (all of them, in
        the file's order, when k covers the file: a fixed set of reference examples stays as it was written)."""
        if k >= len(self.train):
            return list(self.train)
        return random.Random(self.seed).sample(self.train, k)

    def _index(self, source: str):
        if source not in self._indexes:
            if source == "train":
                from hone.retrieval import VectorIndex, load_embedder

                self._indexes[source] = VectorIndex.build([retrieval_query(c.prompt) for c in self.train],
                                                          load_embedder(), list(range(len(self.train))))
            else:
                self._indexes[source] = _documents_index(self.docs)
        return self._indexes[source]

    def build(self, candidate, cases: list[EvalCase]) -> list[list[dict]]:
        """The messages `candidate` answers for each test case."""
        prompts = [list(case.prompt) for case in cases]
        if candidate.rag:
            hits = self._index(candidate.rag.source).search([retrieval_query(p) for p in prompts], candidate.rag.k)
            for i, found in enumerate(hits):
                if candidate.rag.source == "train":
                    # Least similar first, so the most similar example sits right before the question.
                    similar = [self.train[hit.payload] for hit in reversed(found)]
                    prompts[i] = _insert_after_system(prompts[i], demonstration_turns(similar))
                else:
                    prompts[i] = rag_messages(prompts[i], [hit.payload for hit in found])
        if candidate.shots:
            shots = demonstration_turns(self.fixed_shots(candidate.shots))
            prompts = [_insert_after_system(p, shots) for p in prompts]
        return prompts


def _documents_index(docs: Path):
    """The documents' passages indexed as `hone index build` indexes them for `hone serve` (same chunks, same
    embedder, sources named relative to the folder), held in memory; payloads are the served passages."""
    from hone.retrieval.store import build_index, open_index

    with tempfile.TemporaryDirectory(prefix="hone-eval-index-") as folder:
        path = Path(folder) / "docs.index"
        build_index(docs, path, show_progress=False)
        return open_index(path).vectors
