"""Grammar-constrained decoding: replies that always parse as JSON, match a JSON Schema, or call a tool correctly.

A request's `response_format` or `tools` becomes an `OutputGrammar` (a Lark grammar with embedded JSON Schemas,
compiled by llguidance). Each reply gets its own `Constraint`, which masks the tokens the grammar forbids before
a token is chosen and advances over the chosen one. llguidance was picked over xgrammar and outlines-core because
it refuses the JSON Schema keywords it cannot enforce (`if`, `not`, `uniqueItems`, unknown formats ...), where
xgrammar silently ignores them; its mask costs ~60-170 us a token here against a decode step of milliseconds.

JSON is written compactly in the form `json.dumps` gives (", " and ": " separators, no other whitespace), the form
hone's training data renders tool calls in (`hone.data.render.render_tool_call`), so a fine-tuned model is asked
for exactly what it learned. Tool calls use hone's default format: `<tool_call>\\n{"name": ..., "arguments": ...}
\\n</tool_call>`, the name first, each function's arguments held to its `parameters` schema.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

import numpy as np
import torch

from hone.errors import RequestError

# How JSON is written under a constraint: json.dumps' default separators, nothing flexible (no runaway whitespace).
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
ANY_OBJECT = {"type": "object"}
# Free text that never opens a tool call (tool_choice "auto" and "none").
TEXT_WITHOUT_CALLS = r"TEXT: /(?s:.+)/ & ~/(?s:.*<tool_call>.*)/"

_tokenizers: dict[tuple, object] = {}
_pool = None  # llguidance.LLExecutor, made on first use
_tokenizers_lock = threading.Lock()


@dataclass(frozen=True)
class OutputGrammar:
    """What a reply must be, as a Lark grammar for llguidance, and in words for messages and logs."""

    lark: str
    description: str

    @classmethod
    def json_object(cls) -> OutputGrammar:
        """Any JSON object (`response_format: {"type": "json_object"}`)."""
        return cls(f"start: %json {_styled(ANY_OBJECT)}", "a JSON object")

    @classmethod
    def json_schema(cls, schema: dict, name: str = "schema") -> OutputGrammar:
        """A JSON value matching `schema` (`response_format: {"type": "json_schema", ...}`)."""
        return cls(f"start: %json {_styled(schema)}", f"JSON matching the schema '{name}'")

    @classmethod
    def tool_calls(cls, tools: list[dict], choice: str | dict = "auto", parallel: bool = True,
                   reply_schema: dict | None = None) -> OutputGrammar:
        """Calls to `tools` (OpenAI form) in hone's format, as `choice` allows: "auto" (a reply, or calls after
        some text or none), "none" (a reply), "required" (calls), or {"type": "function", "function": {"name":
        ...}} (one call of that function). The reply is free text that never opens a call, or JSON matching
        `reply_schema` when one is given (then calls come without text before them)."""
        functions = {tool["function"]["name"]: tool["function"] for tool in tools}
        named = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
        if named is not None:
            functions = {named: functions[named]}
        # `opened` is a call after its "<tool_call>": text before calls ends exactly where the tag begins
        one = "\"\\n\" body \"\\n</tool_call>\""
        rules = [f"opened: {one}" + (f" (\"\\n<tool_call>\" {one})*" if parallel and named is None else ""),
                 "calls: \"<tool_call>\" opened",
                 "body: " + " | ".join(f"f{i}" for i in range(len(functions)))]
        rules += [f"f{i}: %json {_styled(_call_schema(name, function))}"
                  for i, (name, function) in enumerate(functions.items())]
        if reply_schema is not None:
            reply, starts = [f"reply: %json {_styled(reply_schema)}"], {"none": "reply", "auto": "reply | calls"}
        else:
            reply = [TEXT_WITHOUT_CALLS, 'lead[stop="<tool_call>"]: /(?s:.*)/']
            starts = {"none": "TEXT", "auto": "TEXT | calls | lead opened"}
        mode = choice if isinstance(choice, str) else "named"
        shown = "a reply" if choice == "none" else f"calls to {', '.join(functions)}"
        return cls("\n".join([f"start: {starts.get(mode, 'calls')}", *rules, *reply]), shown)


def reply_grammar(reply_schema: dict | None = None, schema_name: str | None = None, tools: list[dict] | None = None,
                  tool_choice: str | dict = "auto", parallel: bool = True) -> OutputGrammar | None:
    """The one rule for what a reply is held to, in `hone serve` and `hone eval` alike: with `tools`, calls to them or
    a reply (JSON matching `reply_schema` when given); else JSON matching `reply_schema` (named `schema_name`; any
    object when unnamed, for json_object); else nothing (None)."""
    if tools:
        return OutputGrammar.tool_calls(tools, tool_choice, parallel, reply_schema)
    if reply_schema is None:
        return None
    return OutputGrammar.json_schema(reply_schema, schema_name) if schema_name else OutputGrammar.json_object()


def _call_schema(name: str, function: dict) -> dict:
    """One call's JSON: the function's name, then arguments matching its parameters (any object when it has none)."""
    return {"type": "object", "properties": {"name": {"const": name},
                                             "arguments": function.get("parameters") or ANY_OBJECT},
            "required": ["name", "arguments"], "additionalProperties": False}


def _styled(schema: dict) -> str:
    return json.dumps({**schema, "x-guidance": JSON_STYLE})


def grammar_tokenizer(tokenizer, vocab_size: int, stop_ids: tuple[int, ...]):
    """llguidance's view of `tokenizer`, ending a reply with any of `stop_ids` (`stop_token_ids`: the tokens that
    stop generation everywhere); built once per tokenizer, ~0.3 s for a 49k vocabulary."""
    import llguidance.hf

    with _tokenizers_lock:
        key = (id(tokenizer), vocab_size, tuple(sorted(stop_ids)))
        if key not in _tokenizers:
            _tokenizers[key] = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=list(key[2]))
        return _tokenizers[key]


class Constraint:
    """One reply's grammar state: the tokens it allows next, advanced over each chosen token."""

    def __init__(self, grammar: OutputGrammar, tokenizer, param: str = "response_format"):
        import llguidance

        self.grammar = grammar
        self.matcher = llguidance.LLMatcher(tokenizer, grammar.lark, log_level=0)
        if self.matcher.is_error():
            raise RequestError(f"{param}: {_unsupported(self.matcher.get_error())}", param=param,
                               code="invalid_schema")
        self.words = (tokenizer.vocab_size + 31) // 32
        if not self.allowed_tokens().any():
            raise RequestError(f"{param}: the schema admits no value; fix the schema", param=param,
                               code="invalid_schema")

    def allowed_tokens(self) -> torch.Tensor:
        """The allowed-token bitmask (int32 words, 32 tokens each) for the next token."""
        import llguidance.torch

        bitmask = torch.empty((1, self.words), dtype=torch.int32)
        llguidance.torch.fill_next_token_bitmask(self.matcher, bitmask, 0)
        return bitmask[0]

    def accept(self, token: int) -> bool:
        """Advance over `token`; False when the grammar does not allow it (the reply must end)."""
        return self.matcher.consume_token(token)

    @property
    def finished(self) -> bool:
        """True when the grammar allows nothing more than the end of the reply."""
        return self.matcher.is_stopped()

    @property
    def error(self) -> str:
        return self.matcher.get_error()


def _unsupported(error: str) -> str:
    """llguidance's refusal in the user's terms: the keywords it cannot enforce, or why the schema is invalid."""
    first = error.strip().splitlines()[0] if error.strip() else "the grammar could not be built"
    reason = first.split("failed to compile JSON schema: ", 1)[-1]
    if reason.startswith(("Unimplemented keys", "Unknown format")):
        return (f"{reason}; hone's constrained decoding (llguidance) cannot enforce this, and it is never silently "
                "ignored: remove or rewrite those parts of the schema")
    return f"the schema is invalid: {reason}"


def ref_cycle(schema: dict) -> list[str] | None:
    """A chain of local `$ref`s that leads back to itself with no schema in between (`a -> b -> a`), which no
    value can satisfy; None when there is none. Recursion through real content (a tree's children) is fine."""
    def target(ref: str):
        node = schema
        for part in ref.removeprefix("#").strip("/").split("/") if ref != "#" else []:
            node = node.get(part.replace("~1", "/").replace("~0", "~")) if isinstance(node, dict) else None
        return node

    def only_ref(node) -> str | None:
        return node["$ref"] if isinstance(node, dict) and isinstance(node.get("$ref"), str) and \
            node["$ref"].startswith("#") and not set(node) - {"$ref", "$defs", "definitions", "$schema"} else None

    for start in _subschemas(schema):
        chain, ref = [], only_ref(start)
        while ref is not None and ref not in chain:
            chain.append(ref)
            ref = only_ref(target(ref))
        if ref is not None:
            return [*chain[chain.index(ref):], ref]
    return None


def _subschemas(node):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _subschemas(value)
    elif isinstance(node, list):
        for value in node:
            yield from _subschemas(value)


def mask_logits(logits: torch.Tensor, constraints: list[tuple[int, Constraint]]) -> None:
    """Set to -inf, in place, every token a row's constraint forbids; `constraints` pairs a row with its
    constraint (unconstrained rows are left as they are). The rows' masks are computed in parallel by llguidance
    and unpacked with numpy: llguidance's own apply kernel is torch.compile'd, seconds of compiling on first use."""
    import llguidance.torch

    rows = [row for row, _ in constraints]
    words = constraints[0][1].words
    bitmask = torch.empty((len(rows), words), dtype=torch.int32)
    llguidance.torch.fill_next_token_bitmask_par(_executor(), [(c.matcher, i) for i, (_, c) in enumerate(constraints)],
                                                 bitmask)
    bits = np.unpackbits(bitmask.numpy().view(np.uint8), bitorder="little").reshape(len(rows), words * 32)
    allowed = torch.zeros((len(rows), logits.shape[1]), dtype=torch.bool)  # tokens past the grammar's vocabulary: no
    width = min(logits.shape[1], words * 32)
    allowed[:, :width] = torch.from_numpy(bits[:, :width]).bool()
    forbidden = ~allowed.to(logits.device, non_blocking=True)
    if len(rows) == logits.shape[0]:
        logits.masked_fill_(forbidden, float("-inf"))
    else:
        index = torch.tensor(rows, device=logits.device)
        logits[index] = logits[index].masked_fill(forbidden, float("-inf"))


def _executor():
    """llguidance's thread pool for computing several rows' masks at once (one per process)."""
    global _pool
    import llguidance

    with _tokenizers_lock:
        if _pool is None:
            _pool = llguidance.LLExecutor()
        return _pool


class GrammarLogitsProcessor:
    """The same constraints inside transformers' `generate` (a LogitsProcessor): row i of the batch follows
    `constraints[i]` (None: unconstrained), so `hone eval` measures exactly what `hone serve` returns."""

    def __init__(self, constraints: list[Constraint | None], prompt_length: int, stop_ids: tuple[int, ...]):
        self.constraints = list(constraints)
        self.prompt_length = prompt_length
        self.stop_ids = frozenset(stop_ids)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] > self.prompt_length:
            for row, token in enumerate(input_ids[:, -1].tolist()):
                constraint = self.constraints[row]
                if constraint is not None and (token in self.stop_ids or not constraint.accept(token)):
                    self.constraints[row] = None  # the row has ended; what follows is padding
        active = [(row, constraint) for row, constraint in enumerate(self.constraints) if constraint is not None]
        if active:
            mask_logits(scores, active)
        return scores
