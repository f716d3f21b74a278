"""Render a conversation with the model's own chat template and mark which tokens are trained.

Only assistant turns (with weight 1) are trained. The trained character spans are found by rendering
growing prefixes of the conversation; the full text is tokenized once and each token is trained when
its characters fall inside a trained span, so BPE merges across turn boundaries cannot shift the mask.

Tool calling (a conversation with `tools`, assistant `tool_calls` and `tool` messages): when the model's
chat template renders tools itself (it mentions `tools` and a test conversation comes out with the tool list,
the call and the result in it), it gets them as transformers passes them (`apply_chat_template(...,
tools=...)`, call arguments as objects). Otherwise hone folds them into plain turns in the Hermes / Qwen2.5
format, which `tool_system_prompt`, `render_tool_call` and `render_tool_response` define for every stage:

    system     the system text, a blank line, then `tool_system_prompt(tools)`: instructions and one JSON
               line per tool inside <tools></tools> (a system turn of its own when the conversation has none)
    assistant  its text (if any), then per call `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`,
               one per line
    tool       consecutive tool results become one user turn, each `<tool_response>\\n...\\n</tool_response>`

Either way the assistant's calls and answers are trained; the tool list and the tool results are not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from hone.errors import HoneError

TOOLS_HEADER = "# Tools"
# A conversation the template must render with its tool list, call and result for hone to use its tool support.
PROBE_TOOLS = [{"type": "function", "function": {
    "name": "hone_probe_function", "description": "probe",
    "parameters": {"type": "object", "properties": {"probe": {"type": "string"}}}}}]
PROBE_MESSAGES = [
    {"role": "user", "content": "probe"},
    {"role": "assistant", "content": "", "tool_calls": [{"id": "call_probe", "type": "function", "function": {
        "name": "hone_probe_function", "arguments": {"probe": "hone_probe_argument"}}}]},
    {"role": "tool", "tool_call_id": "call_probe", "content": "hone_probe_result"},
    {"role": "assistant", "content": "done"},
]
_native_tools: dict[str, bool] = {}  # chat template source -> whether it renders tools (probing costs a render)


@dataclass
class RenderedExample:
    """One tokenized conversation: token ids and, per token, whether the loss is computed on it."""

    input_ids: list[int]
    trained: list[bool]
    text: str

    @property
    def num_trained(self) -> int:
        return sum(self.trained)

    def __len__(self) -> int:
        return len(self.input_ids)


def tool_system_prompt(tools: list[dict]) -> str:
    """The system text that lists `tools` (OpenAI form) and says how to call them, in hone's default format."""
    listed = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    return (f"{TOOLS_HEADER}\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n"
            f"<tools>\n{listed}\n</tools>\n\n"
            "For each function call, return a json object with function name and arguments within "
            "<tool_call></tool_call> XML tags:\n<tool_call>\n"
            '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


def render_tool_call(call: dict) -> str:
    """One OpenAI tool call (`arguments` a JSON string or an object) as the assistant writes it by default."""
    body = json.dumps({"name": call["function"]["name"], "arguments": _arguments(call)}, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"


def _arguments(call: dict) -> dict:
    """A call's arguments as an object: OpenAI sends them as a JSON string."""
    arguments = call["function"]["arguments"]
    return json.loads(arguments) if isinstance(arguments, str) else arguments


TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"


def parse_tool_call(body: str) -> tuple[str, str] | None:
    """A call's function name and arguments (a JSON string, as OpenAI sends them) from the JSON between the tags;
    None when it is not `{"name": str, "arguments": object}`."""
    try:
        call = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not (isinstance(call, dict) and isinstance(call.get("name"), str) and isinstance(call.get("arguments"), dict)):
        return None
    return call["name"], json.dumps(call["arguments"], ensure_ascii=False)


def parse_tool_calls(text: str) -> tuple[str, list[tuple[str, str]]]:
    """A whole reply written in hone's default format split into its text and its calls, (name, arguments JSON)
    each, read exactly as `hone serve` reads a stream (`ToolCallStream`). A block that does not parse as a call, or
    one left open, stays in the text, so nothing the model wrote is lost."""
    reader = ToolCallStream()
    parts = reader.feed(text) + reader.finish()
    content = "".join(part for part in parts if isinstance(part, str)).strip()
    return content, [(part.name, part.arguments) for part in parts if isinstance(part, Call)]


@dataclass(frozen=True)
class Call:
    """One complete tool call: the function's name and its arguments as a JSON string."""

    name: str
    arguments: str


class ToolCallStream:
    """Text in as it is generated; out come text pieces (str) and complete `Call`s, in the order written.

    Text that could still be the start of `<tool_call>` is held back until it cannot; the line breaks between
    calls are not text. A call still open when the reply ends (cut by max_tokens) comes back as the text it was,
    so nothing the model wrote is lost and every call handed on parses."""

    def __init__(self):
        self.buffer = ""
        self.in_call = False
        self.calls = 0

    def feed(self, text: str) -> list[str | Call]:
        """What `text` completes: text that can no longer open a call, and calls whose closing tag arrived."""
        self.buffer += text
        out: list[str | Call] = []
        while True:
            if self.in_call:
                end = self.buffer.find(TOOL_CALL_CLOSE)
                if end < 0:
                    return out
                body, self.buffer = self.buffer[:end], self.buffer[end + len(TOOL_CALL_CLOSE):]
                self.in_call = False
                call = parse_tool_call(body.strip())
                if call is None:
                    out.append(f"{TOOL_CALL_OPEN}{body}{TOOL_CALL_CLOSE}")
                else:
                    self.calls += 1
                    out.append(Call(*call))
                continue
            start = self.buffer.find(TOOL_CALL_OPEN)
            if start < 0:
                held = _opening_at_end(self.buffer)
                self._text(out, self.buffer[:len(self.buffer) - held])
                self.buffer = self.buffer[len(self.buffer) - held:]
                return out
            self._text(out, self.buffer[:start])
            self.buffer, self.in_call = self.buffer[start + len(TOOL_CALL_OPEN):], True

    def finish(self) -> list[str]:
        """The text still held back when the reply ends (an unclosed call comes back as the text it was)."""
        rest = f"{TOOL_CALL_OPEN}{self.buffer}" if self.in_call else self.buffer
        self.buffer, self.in_call = "", False
        return [rest] if rest.strip() or (rest and not self.calls) else []

    def _text(self, out: list[str | Call], text: str) -> None:
        if self.calls and not text.strip():
            return  # the line break between two calls
        if text:
            out.append(text)


def _opening_at_end(text: str) -> int:
    """How many characters at the end of `text` could begin `<tool_call>`."""
    for size in range(min(len(text), len(TOOL_CALL_OPEN) - 1), 0, -1):
        if TOOL_CALL_OPEN.startswith(text[-size:]):
            return size
    return 0


def writes_default_tool_calls(tokenizer) -> bool:
    """Whether the model calls tools in hone's default format (`parse_tool_calls` reads its replies): its template
    has no tool support of its own, or renders calls the same way (Hermes / Qwen2.5)."""
    if not supports_tools(tokenizer):
        return True
    text = tokenizer.apply_chat_template(PROBE_MESSAGES, tools=PROBE_TOOLS, tokenize=False)
    return any(name == "hone_probe_function" for name, _ in parse_tool_calls(text)[1])


def render_tool_response(content: str) -> str:
    """One tool result as the model reads it by default (inside a user turn)."""
    return f"<tool_response>\n{content}\n</tool_response>"


def uses_tools(messages: list[dict], tools: list[dict] | None) -> bool:
    """True when the conversation has a tool list, a call or a tool result."""
    return bool(tools) or any(m["role"] == "tool" or m.get("tool_calls") for m in messages)


def _template_source(tokenizer) -> str:
    template = tokenizer.chat_template
    return "\n".join(template.values()) if isinstance(template, dict) else template or ""


def supports_tools(tokenizer) -> bool:
    """Whether the model's chat template renders a tool list, calls and tool results itself."""
    source = _template_source(tokenizer)
    if "tools" not in source:
        return False
    if source not in _native_tools:
        try:
            text = tokenizer.apply_chat_template(PROBE_MESSAGES, tools=PROBE_TOOLS, tokenize=False)
        except Exception:  # a template that fails on tools, whatever it raises, has no usable tool support
            text = ""
        shown = ("hone_probe_argument", "hone_probe_result", "done")
        # The function's name shows twice: in the tool list and in the call.
        _native_tools[source] = text.count("hone_probe_function") >= 2 and all(s in text for s in shown)
    return _native_tools[source]


def _native_message(message: dict) -> dict:
    """A canonical message as tool-aware templates expect it: call arguments as objects, no weight."""
    shown = {key: value for key, value in message.items() if key != "weight"}
    if message.get("tool_calls"):
        shown["tool_calls"] = [{**call, "function": {**call["function"], "arguments": _arguments(call)}}
                               for call in message["tool_calls"]]
    return shown


def default_tool_turns(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    """The conversation as plain role/content turns in hone's default tool format (see the module docstring);
    assistant turns keep their weight."""
    turns: list[dict] = []
    rest = messages
    if tools:
        prompt = tool_system_prompt(tools)
        if messages and messages[0]["role"] == "system":
            prompt, rest = f"{messages[0]['content']}\n\n{prompt}", messages[1:]
        turns.append({"role": "system", "content": prompt})
    previous = None
    for message in rest:
        if message["role"] == "tool" and previous == "tool":
            turns[-1]["content"] += f"\n{render_tool_response(message['content'])}"  # one turn for a round's results
        elif message["role"] == "tool":
            turns.append({"role": "user", "content": render_tool_response(message["content"])})
        elif message.get("tool_calls"):
            parts = [message["content"]] if message["content"] else []
            content = "\n".join(parts + [render_tool_call(call) for call in message["tool_calls"]])
            turns.append({**_plain(message), "content": content})
        else:
            turns.append(_plain(message))
        previous = message["role"]
    return turns


def _plain(message: dict) -> dict:
    return {key: message[key] for key in ("role", "content", "weight") if key in message}


def _conversation(tokenizer, messages: list[dict], tools: list[dict] | None) -> tuple[list[dict], list | None]:
    """The turns (with weights) and the tools to hand the chat template."""
    if not uses_tools(messages, tools):
        return [_plain(m) for m in messages], None
    if supports_tools(tokenizer):
        return [{**_native_message(m), **({"weight": m["weight"]} if "weight" in m else {})} for m in messages], tools
    return default_tool_turns(messages, tools), None


def _template(tokenizer, turns: list[dict], tools: list[dict] | None, add_generation_prompt: bool) -> str:
    shown = [{key: value for key, value in turn.items() if key != "weight"} for turn in turns]
    return tokenizer.apply_chat_template(shown, tools=tools, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def trained_spans(tokenizer, messages: list[dict],
                  tools: list[dict] | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans of every trained assistant turn (through its end token)."""
    turns, tools = _conversation(tokenizer, messages, tools)
    text = _template(tokenizer, turns, tools, add_generation_prompt=False)
    spans = []
    for index, turn in enumerate(turns):
        if turn["role"] != "assistant" or turn.get("weight", 1) == 0:
            continue
        before = _template(tokenizer, turns[:index], tools, add_generation_prompt=True) if index else ""
        through = _template(tokenizer, turns[: index + 1], tools, add_generation_prompt=False)
        if not text.startswith(through) or not through.startswith(before):
            raise HoneError(
                "the model's chat template does not render conversations incrementally, so the assistant "
                "tokens cannot be located",
                hint="use a model whose chat template renders each turn after the previous ones (ChatML, "
                "Llama 3, Mistral and most instruct models do)",
            )
        spans.append((len(before), len(through)))
    return text, spans


def render_chat(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> RenderedExample:
    """Tokenize `messages` (with the conversation's `tools`, if any) with the chat template; `trained[i]` says
    whether token i is a target."""
    text, spans = trained_spans(tokenizer, messages, tools)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    trained = []
    for start, end in encoded["offset_mapping"]:
        trained.append(any(lo <= start and end <= hi and end > start for lo, hi in spans))
    return RenderedExample(input_ids=list(encoded["input_ids"]), trained=trained, text=text)


def render_prompt(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
    """Token ids of the conversation so far followed by the assistant header, ready for generation."""
    turns, tools = _conversation(tokenizer, messages, tools)
    text = _template(tokenizer, turns, tools, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def count_tokens(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> int:
    """Number of tokens of the full conversation once the chat template is applied."""
    turns, tools = _conversation(tokenizer, messages, tools)
    text = _template(tokenizer, turns, tools, add_generation_prompt=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])
