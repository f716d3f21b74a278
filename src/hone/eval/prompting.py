"""What each candidate is shown: the test prompt, optionally preceded by k-shot examples from the training
set, and optionally augmented with retrieved training examples or document passages (RAG).

Demonstrations are inserted as earlier user/assistant turns after any system message, the way a
developer writes a few-shot chat prompt; passages go into the system message, numbered, with their sources.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from hone.errors import HoneError


@dataclass
class EvalCase:
    """One conversation split into the prompt (all but the last turn) and the reference reply."""

    prompt: list[dict]
    reference: str


def load_cases(path: Path, limit: int | None = None, what: str = "test file") -> list[EvalCase]:
    """The first `limit` conversations of a chat file, each split into prompt and reference reply."""
    from hone.data.formats import load_chat_examples

    cases = []
    for example in load_chat_examples(path)[:limit]:
        messages = example.messages
        if len(messages) < 2 or messages[-1]["role"] != "assistant":
            raise HoneError(f"{path}:{example.line}: the {what}'s conversation needs a prompt followed by the "
                            "expected assistant reply",
                            hint="put the user message (and any system message) before the expected reply")
        cases.append(EvalCase(prompt=[{"role": m["role"], "content": m["content"]} for m in messages[:-1]],
                              reference=messages[-1]["content"]))
    if not cases:
        raise HoneError(f"{path} holds no conversations", hint=f"give a {what} with at least one example")
    return cases


def question_of(prompt: list[dict]) -> str:
    """The text retrieval searches with: the last user turn of the prompt."""
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), prompt[-1]["content"])


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


def with_passages(prompt: list[dict], passages: list) -> list[dict]:
    """The prompt with retrieved passages, numbered and sourced, at the end of its system message (one is
    added when there is none: many chat templates accept a single system message only)."""
    numbered = "\n\n".join(f"[{i}] ({p.source}) {p.text}" for i, p in enumerate(passages, start=1))
    context = f"Use these passages where they help answer, and do not invent facts beyond them.\n\n{numbered}"
    if prompt and prompt[0]["role"] == "system":
        return [{"role": "system", "content": f"{prompt[0]['content']}\n\n{context}"}, *prompt[1:]]
    return [{"role": "system", "content": context}, *prompt]


class PromptBuilder:
    """Builds each candidate's prompts; retrieval indexes are built once and shared by candidates."""

    def __init__(self, train: list[EvalCase] | None, docs: Path | None, seed: int = 0):
        self.train = train
        self.docs = docs
        self.seed = seed
        self._indexes: dict[str, object] = {}

    def fixed_shots(self, k: int) -> list[EvalCase]:
        """k training examples drawn once with the run's seed: every test prompt sees the same demo."""
        rng = random.Random(self.seed)
        return rng.sample(self.train, min(k, len(self.train)))

    def _index(self, source: str):
        if source not in self._indexes:
            from hone.retrieval import VectorIndex, chunk_documents, load_embedder

            embedder = load_embedder()
            if source == "train":
                self._indexes[source] = VectorIndex.build([question_of(c.prompt) for c in self.train], embedder,
                                                          list(range(len(self.train))))
            else:
                passages = chunk_documents(self.docs)
                self._indexes[source] = VectorIndex.build([p.text for p in passages], embedder, passages)
        return self._indexes[source]

    def build(self, candidate, cases: list[EvalCase]) -> list[list[dict]]:
        """The messages `candidate` answers for each test case."""
        prompts = [list(case.prompt) for case in cases]
        if candidate.rag:
            hits = self._index(candidate.rag.source).search([question_of(p) for p in prompts], candidate.rag.k)
            for i, found in enumerate(hits):
                if candidate.rag.source == "train":
                    # Least similar first, so the most similar example sits right before the question.
                    similar = [self.train[hit.payload] for hit in reversed(found)]
                    prompts[i] = _insert_after_system(prompts[i], demonstration_turns(similar))
                else:
                    prompts[i] = with_passages(prompts[i], [hit.payload for hit in found])
        if candidate.shots:
            shots = demonstration_turns(self.fixed_shots(candidate.shots))
            prompts = [_insert_after_system(p, shots) for p in prompts]
        return prompts
