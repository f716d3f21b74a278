"""Read a dataset file in any supported format into one canonical chat form, reporting every bad line.

JSONL formats (one JSON object per line): OpenAI chat (with function calling: `tools`, assistant `tool_calls`
and `tool` messages), OpenAI DPO, prompt/completion, alpaca and sharegpt. The format is detected from the first
line whose keys match one; a line of another format is an error. A `.csv` file is read through a column map onto
prompt/completion or alpaca fields. A broken line never stops reading: it becomes a `Problem` naming its line and
field, and is not used.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shlex
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jsonschema.exceptions import SchemaError, ValidationError
from jsonschema.validators import validator_for

from hone.errors import HoneError

PLAIN_ROLES = {"system": "system", "user": "user", "assistant": "assistant"}
CHAT_ROLES = {**PLAIN_ROLES, "tool": "tool"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant", **PLAIN_ROLES}
FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what OpenAI accepts as a function name
FUNCTION_KEYS = ("name", "description", "parameters", "strict")
CSV_FIELDS = ("prompt", "completion", "system", "instruction", "input", "output")
# Which CSV fields make which record shape: (required, optional).
CSV_SHAPES = {
    "prompt_completion": (("prompt", "completion"), ("system",)),
    "alpaca": (("instruction", "output"), ("input", "system")),
}
SHOWN_PROBLEMS = 5
SHOWN_VALUE_CHARS = 60
UTF8_BOM = b"\xef\xbb\xbf"
# Longest first: the UTF-32LE mark begins with the UTF-16LE one.
WIDE_BOMS = ((b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe\x00\x00", "UTF-32"), (b"\xfe\xff", "UTF-16"),
             (b"\xff\xfe", "UTF-16"))
HOLDS = {True: "preference pairs (OpenAI DPO format)", False: "conversations"}


@dataclass
class Problem:
    """One thing wrong with the data: where (line, JSON path of the field) and what to do about it."""

    line: int  # 1-based line in the file; 0 for the file as a whole
    field: str  # JSON path such as `messages[2].content`; "" for the whole line
    message: str
    severity: str = "error"  # "error" (the example is not used) or "warning" (it is used)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Example:
    """One conversation in canonical chat form: dicts with role and content (a string, "" for an assistant turn
    that only calls tools), plus `weight` (assistant), `tool_calls` (assistant, OpenAI form with `arguments` a
    JSON string) and `tool_call_id` (tool)."""

    messages: list[dict]
    source: str
    line: int
    format: str
    lineage: dict | None = None  # a distilled row's `metadata.distill` (teacher, template, filters), kept as is
    tools: list[dict] | None = None  # the functions the conversation may call, OpenAI form
    parallel_tool_calls: bool | None = None  # None when the file does not say


@dataclass
class PreferenceExample:
    """One preference pair: the prompt conversation, the preferred reply and the rejected reply."""

    prompt: list[dict]
    chosen: dict
    rejected: dict
    source: str
    line: int


class HasProblems:
    """Splits a `problems` list into errors and warnings."""

    problems: list[Problem]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]


@dataclass
class Dataset(HasProblems):
    """Everything read from one file: usable examples, every problem, and how many lines were read."""

    path: str
    format: str  # chat, dpo, prompt_completion, alpaca, sharegpt, csv, or unknown
    examples: list[Example] | list[PreferenceExample]
    problems: list[Problem]
    lines_read: int  # non-blank lines (CSV: data rows); each gave an example or an error
    blank_lines: int


def _printable(text: str) -> str:
    """`text` with any unpaired surrogate (from a key or value quoted in a message) written as its \\u escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass
class _Line:
    """The problems found on one line; the line's example is kept only when none is an error."""

    number: int
    problems: list[Problem] = field(default_factory=list)

    def error(self, path: str, message: str) -> None:
        self.problems.append(Problem(self.number, _printable(path), _printable(message), "error"))

    def warn(self, path: str, message: str) -> None:
        self.problems.append(Problem(self.number, _printable(path), _printable(message), "warning"))

    @property
    def failed(self) -> bool:
        return any(p.severity == "error" for p in self.problems)


def _kind(value: Any) -> str:
    """The JSON name of a value's type, for messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return {dict: "an object", list: "an array", str: "a string", type(None): "null"}[type(value)]


def _shown(value: Any) -> str:
    """A JSON scalar as written (shortened); an array or object by its kind, never its whole content."""
    if isinstance(value, list | dict):
        return _kind(value)
    text = json.dumps(value)
    return text if len(text) <= SHOWN_VALUE_CHARS else text[:SHOWN_VALUE_CHARS - 1] + "…"


def _is_text(value: str) -> bool:
    """False when a \\u escape left an unpaired surrogate, which no tokenizer or UTF-8 file can hold."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _text(record: dict, key: str, path: str, line: _Line, required: bool = True) -> str | None:
    """A non-empty string field; reports a missing, mistyped or empty value."""
    where = _join(path, key)
    if key not in record or (record[key] is None and not required):
        if required:
            line.error(where, f"missing key '{key}'; add it (or fix its spelling)")
        return None
    value = record[key]
    if not isinstance(value, str):
        line.error(where, f"must be a string, got {_kind(value)}")
        return None
    if required and not value.strip():
        line.error(where, "is empty; fill in the text or remove the example")
        return None
    if not _is_text(value):
        line.error(where, "holds an unpaired surrogate escape such as \\ud800, which is not text; fix or remove "
                   "that \\u escape")
        return None
    return value


def _typed(record: dict, key: str, kind: type, path: str, line: _Line) -> Any:
    """A field that must be present with the given JSON type (dict or list)."""
    where = _join(path, key)
    if key not in record:
        line.error(where, f"missing key '{key}'; add it (or fix its spelling)")
        return None
    value = record[key]
    if not isinstance(value, kind):
        line.error(where, f"must be {_kind(kind())}, got {_kind(value)}")
        return None
    return value


def _message(item: Any, path: str, line: _Line, roles: dict[str, str], keys: tuple[str, str],
             weight_allowed: bool = True, functions: dict[str, Any] | None = None) -> dict | None:
    """One message in canonical form, from a dict with a role key and a content key.

    `functions` (OpenAI chat only: name -> parameters validator, or None when its definition is broken) turns
    on the tool keys: assistant `tool_calls`, whose calls it checks, and tool `tool_call_id`.
    """
    role_key, content_key = keys
    if not isinstance(item, dict):
        line.error(path, f"must be an object with '{role_key}' and '{content_key}', got {_kind(item)}")
        return None
    role, allowed, where = None, ", ".join(roles), _join(path, role_key)
    if role_key not in item:
        line.error(where, f"missing key '{role_key}'; allowed roles: {allowed}")
    elif not isinstance(item[role_key], str) or item[role_key] not in roles:
        line.error(where, f"unknown role {_shown(item[role_key])}; allowed roles: {allowed}")
    else:
        role = roles[item[role_key]]
    tool_keys = functions is not None
    has_calls = tool_keys and item.get("tool_calls") is not None
    if role == "tool" and not (isinstance(item.get(content_key), str) and item[content_key].strip()):
        line.error(_join(path, content_key), "a tool message needs content: the result the tool returned (write "
                   'e.g. "{}" or "no results" when it returned nothing)')
        content = ""  # kept, so that the call it answers is not reported as unanswered too
    else:
        # An assistant turn that calls tools may leave its content null or out (OpenAI does).
        content = _text(item, content_key, path, line, required=not has_calls)
    message = {"role": role, "content": (content or "") if has_calls else content}
    if has_calls:
        message["tool_calls"] = _calls_of(item["tool_calls"], _join(path, "tool_calls"), line, role, functions)
    if tool_keys and role == "tool":
        message["tool_call_id"] = _call_id(item, path, line)
    elif tool_keys and "tool_call_id" in item:
        line.error(_join(path, "tool_call_id"), "tool_call_id is only allowed on tool messages (the answer to a "
                   "call); remove it")
    if "weight" in item and weight_allowed:
        if role != "assistant":
            line.error(_join(path, "weight"), "weight is only allowed on assistant messages")
        elif item["weight"] not in (0, 1) or isinstance(item["weight"], bool):
            line.error(_join(path, "weight"), f"must be 0 or 1, got {_shown(item['weight'])}")
        else:
            message["weight"] = item["weight"]
    known = ({role_key, content_key} | ({"weight"} if weight_allowed else set())
             | ({"tool_calls", "tool_call_id"} if tool_keys else set()))
    for key in sorted(item.keys() - known):
        line.warn(_join(path, key), f"unknown key '{key}' is ignored; a message has "
                  f"{', '.join(sorted(known))}")
    usable = role and message["content"] is not None and message.get("tool_call_id", "") is not None
    return message if usable else None


def _call_id(item: dict, path: str, line: _Line) -> str | None:
    """A tool message's `tool_call_id`: the id of the call it answers."""
    if "tool_call_id" not in item:
        line.error(_join(path, "tool_call_id"), "missing key 'tool_call_id'; a tool message must name the id of "
                   "the assistant's call it answers")
        return None
    return _text(item, "tool_call_id", path, line)


def _calls_of(value: Any, path: str, line: _Line, role: str | None, functions: dict[str, Any]) -> list[dict]:
    """An assistant message's `tool_calls` in canonical form. A broken call is reported (so the line is not used)
    and kept when its id can be read, so that the tool message answering it is not reported as well."""
    if role != "assistant":
        line.error(path, "tool_calls is only allowed on assistant messages; move the calls to an assistant turn")
        return []
    if not isinstance(value, list):
        line.error(path, f"must be an array of calls, got {_kind(value)}")
        return []
    if not value:
        line.error(path, "is empty; remove it or add the calls the assistant makes")
    calls = [_call(call, f"{path}[{i}]", line, functions) for i, call in enumerate(value)]
    return [c for c in calls if c is not None]


def _call(call: Any, path: str, line: _Line, functions: dict[str, Any]) -> dict | None:
    """One tool call {"id", "type": "function", "function": {"name", "arguments"}}, checked against the tools;
    None when its id cannot be read."""
    if not isinstance(call, dict):
        line.error(path, f'must be an object with "id", "type" and "function", got {_kind(call)}')
        return None
    call_id = _text(call, "id", path, line)
    _function_type(call, path, line)
    function = _typed(call, "function", dict, path, line)
    if function is None:
        return None if call_id is None else {"id": call_id, "type": "function", "function": {}}
    where = _join(path, "function")
    name = _text(function, "name", where, line)
    arguments = _arguments(function, where, line)
    for key in sorted(call.keys() - {"id", "type", "function"}):
        line.warn(_join(path, key), f"unknown key '{key}' is ignored; a call has function, id, type")
    for key in sorted(function.keys() - {"name", "arguments"}):
        line.warn(_join(where, key), f"unknown key '{key}' is ignored; a call's function has arguments, name")
    if name is not None and name not in functions:
        defined = ", ".join(functions)
        line.error(_join(where, "name"), f"unknown function {name!r}; the tools define: {defined}" if defined else
                   f'unknown function {name!r}: the conversation has no "tools" list; add one that defines it')
    elif name is not None and arguments is not None and functions[name] is not None:
        errors = functions[name].iter_errors(arguments)
        for error in sorted(errors, key=lambda e: [str(part) for part in e.absolute_path]):
            line.error(_join(where, "arguments"), _argument_problem(name, error))
    if call_id is None:
        return None
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": function.get("arguments")}}


def _function_type(record: dict, path: str, line: _Line) -> None:
    """Reports a tool's or a call's `type` unless it is "function" (the only kind of tool OpenAI trains)."""
    if record.get("type") != "function":
        found = f"got {_shown(record['type'])}" if "type" in record else "it is missing"
        line.error(_join(path, "type"), f'must be "function", {found}; set "type": "function"')


def _arguments(function: dict, path: str, line: _Line) -> dict | None:
    """A call's `arguments`: a JSON string encoding an object, decoded."""
    where = _join(path, "arguments")
    if "arguments" not in function:
        line.error(where, "missing key 'arguments'; give the call's arguments as a JSON string such as "
                   '"{}" when it takes none')
        return None
    value = function["arguments"]
    if not isinstance(value, str):
        line.error(where, f"must be a string holding JSON (as OpenAI writes it), got {_kind(value)}; encode the "
                   "arguments object as a string, e.g. with json.dumps")
        return None
    try:
        decoded = json.loads(value)
    except (ValueError, RecursionError) as error:
        detail = f"{error.msg} at column {error.colno}" if isinstance(error, json.JSONDecodeError) else "unreadable"
        line.error(where, f"is not valid JSON ({detail}); write the arguments as a JSON object in a string")
        return None
    if not isinstance(decoded, dict):
        line.error(where, f"must encode a JSON object of named arguments, got {_kind(decoded)}")
        return None
    return decoded


def _argument_problem(name: str, error: ValidationError) -> str:
    """What is wrong with one argument, in words that name it and the function."""
    argument = ".".join(str(part) for part in error.absolute_path)
    what = f"argument '{argument}': {error.message}" if argument else error.message
    return (f"does not match the parameters of function {name!r}: {_printable(what)}; fix the arguments (or the "
            "function's parameters schema in tools)")


def _tools(record: dict, line: _Line) -> tuple[list[dict] | None, dict[str, Any]]:
    """The top-level `tools` in canonical form and, per function name, a validator for its arguments (None when
    the definition is broken, so its calls are not checked against it)."""
    if record.get("tools") is None:
        return None, {}
    value = record["tools"]
    if not isinstance(value, list):
        line.error("tools", f"must be an array of tools, got {_kind(value)}")
        return None, {}
    tools, functions, first = [], {}, {}
    for i, tool in enumerate(value):
        path = f"tools[{i}]"
        if not isinstance(tool, dict):
            line.error(path, f'must be an object with "type": "function" and "function", got {_kind(tool)}')
            continue
        _function_type(tool, path, line)
        function = _typed(tool, "function", dict, path, line)
        if function is None:
            continue
        where = _join(path, "function")
        name = _text(function, "name", where, line)
        if name is None:
            continue
        if not FUNCTION_NAME.fullmatch(name):
            line.error(_join(where, "name"), f"{_shown(name)} is not a function name: use 1 to 64 letters, digits, "
                       "underscores or dashes")
        if name in first:
            line.error(_join(where, "name"), f"function {name!r} is defined twice ({first[name]} and {path}); keep "
                       "one definition")
            continue
        first[name] = path
        _text(function, "description", where, line, required=False)
        if "strict" in function and not isinstance(function["strict"], bool):
            line.error(_join(where, "strict"), f"must be true or false, got {_shown(function['strict'])}")
        for key in sorted(function.keys() - set(FUNCTION_KEYS)):
            line.warn(_join(where, key), f"unknown key '{key}' is ignored; a function has {', '.join(FUNCTION_KEYS)}")
        functions[name] = _parameters(function, where, line)
        tools.append({"type": "function",
                      "function": {key: function[key] for key in FUNCTION_KEYS if function.get(key) is not None}})
    return tools or None, functions


def _parameters(function: dict, path: str, line: _Line) -> Any:
    """A validator for the function's `parameters` JSON Schema (none given: no arguments); None when broken."""
    where = _join(path, "parameters")
    schema = function.get("parameters")
    if schema is None:
        schema = {"type": "object", "properties": {}, "additionalProperties": False}  # OpenAI: takes no arguments
    elif not isinstance(schema, dict) or schema.get("type") != "object":
        found = f'"type" is {_shown(schema.get("type"))}' if isinstance(schema, dict) else f"got {_kind(schema)}"
        line.error(where, f'must be a JSON Schema of an object ({{"type": "object", "properties": {{...}}}}), '
                   f"{found}; a function's arguments are named")
        return None
    try:
        cls = validator_for(schema)
        cls.check_schema(schema)
    except SchemaError as error:
        at = "/".join(str(part) for part in error.absolute_path)
        line.error(where, f"is not a valid JSON Schema: {_printable(error.message)}" + (f" (at {at})" if at else "")
                   + "; fix the schema")
        return None
    return cls(schema)


def _parallel(record: dict, line: _Line) -> bool | None:
    """The optional top-level `parallel_tool_calls` flag."""
    value = record.get("parallel_tool_calls")
    if value is not None and not isinstance(value, bool):
        line.error("parallel_tool_calls", f"must be true or false, got {_shown(value)}")
        return None
    return value


def _indexed_messages(items: list, path: str, line: _Line, roles: dict[str, str],
                      keys: tuple[str, str] = ("role", "content"), weight_allowed: bool = True,
                      functions: dict[str, Any] | None = None) -> list[tuple[int, dict]]:
    """Every usable message of a list with its index; reports an empty list and each broken message."""
    if not items:
        line.error(path, "is empty; add the messages of the conversation")
    converted = [(i, _message(item, f"{path}[{i}]", line, roles, keys, weight_allowed, functions))
                 for i, item in enumerate(items)]
    return [(i, m) for i, m in converted if m is not None]


def _messages(items: list, path: str, line: _Line, roles: dict[str, str],
              keys: tuple[str, str] = ("role", "content"), weight_allowed: bool = True) -> list[dict]:
    """Every message of a list, in canonical form; reports an empty list and each broken message."""
    return [m for _, m in _indexed_messages(items, path, line, roles, keys, weight_allowed)]


def _check_tool_flow(messages: list[tuple[int, dict]], parallel: bool | None, line: _Line) -> None:
    """Every call has its own id and is answered by a tool message before the conversation moves on (OpenAI
    requires it), only the final assistant turn may leave its calls for the application to run, and a turn
    makes several calls only when `parallel_tool_calls` allows it."""
    made: dict[str, str] = {}  # call id -> where the call is
    answered: dict[str, int] = {}  # call id -> index of the tool message that answered it
    waiting: dict[str, str] = {}  # calls of the latest assistant turn not answered yet
    duplicated: set[str] = set()  # reported at the call, so not again at its answers

    def unanswered() -> None:
        for call_id, where in waiting.items():
            line.error(where, f"call {call_id!r} is never answered; add a tool message with \"tool_call_id\": "
                       f"{json.dumps(call_id)} right after the assistant turn that makes it (OpenAI requires every "
                       "call answered before the conversation goes on)")
        waiting.clear()

    for index, message in messages:
        if message["role"] == "tool":
            call_id = message["tool_call_id"]
            where = f"messages[{index}].tool_call_id"
            if call_id in waiting:
                answered[call_id] = index
                del waiting[call_id]
            elif call_id in duplicated:
                continue
            elif call_id in answered:
                line.error(where, f"call {call_id!r} was already answered by messages[{answered[call_id]}]; "
                           "remove one of the answers")
            elif call_id not in made:
                pending = ", ".join(repr(c) for c in waiting)
                line.error(where, f"{call_id!r} answers no call; " + (
                    f"the calls waiting for an answer are {pending}" if pending else
                    "no assistant turn just before it makes a call with that id") + "; fix the id")
            continue  # a late answer: the call was already reported as never answered
        unanswered()
        calls = message.get("tool_calls", [])
        if len(calls) > 1 and parallel is False:
            line.error(f"messages[{index}].tool_calls", f"holds {len(calls)} calls but parallel_tool_calls is "
                       "false; split them into one assistant turn per call (each followed by its answer) or "
                       "set parallel_tool_calls to true")
        for number, call in enumerate(calls):
            where = f"messages[{index}].tool_calls[{number}].id"
            if call["id"] in made:
                line.error(where, f"duplicate call id {call['id']!r} (also {made[call['id']]}); give each call "
                           "its own id")
                duplicated.add(call["id"])
                continue
            made[call["id"]] = waiting[call["id"]] = where
    if messages and messages[-1][1]["role"] != "assistant":
        unanswered()  # only a final assistant turn may end on calls: the example teaches which call to make


def _check_conversation(messages: list[dict], path: str, line: _Line, role_key: str = "role") -> None:
    """A training conversation needs an assistant reply, and must end with one."""
    if line.failed:
        return  # a broken message already explains the line; its role may be the missing assistant
    if not any(m["role"] == "assistant" for m in messages):
        line.error(path, "has no assistant message; add the reply the model should learn")
    elif messages[-1]["role"] != "assistant":
        line.error(f"{path}[{len(messages) - 1}].{role_key}",
                   f"the conversation ends with a {messages[-1]['role']} message; it must end with the "
                   "assistant reply to learn (remove the trailing message or add the reply)")
    elif all(m.get("weight", 1) == 0 for m in messages if m["role"] == "assistant"):
        line.warn(path, "every assistant message has weight 0, so nothing in this example is trained")


def _with_system(record: dict, line: _Line, turns: list[dict]) -> list[dict]:
    """Prepend the optional top-level "system" text as a system message."""
    system = _text(record, "system", "", line, required=False)
    return ([{"role": "system", "content": system}] if system and system.strip() else []) + turns


def _from_chat(record: dict, line: _Line) -> tuple[list[dict], list[dict] | None, bool | None]:
    """OpenAI chat: {"messages": [{"role", "content", "weight"?, "tool_calls"?, "tool_call_id"?}, ...],
    "tools"?: [...], "parallel_tool_calls"?: bool}; returns the messages, the tools and the parallel flag."""
    tools, functions = _tools(record, line)
    parallel = _parallel(record, line)
    items = _typed(record, "messages", list, "", line)
    if items is None:
        return [], tools, parallel
    indexed = _indexed_messages(items, "messages", line, CHAT_ROLES, functions=functions)
    _check_tool_flow(indexed, parallel, line)
    messages = [m for _, m in indexed]
    _check_conversation(messages, "messages", line)
    return messages, tools, parallel


def _from_sharegpt(record: dict, line: _Line) -> list[dict]:
    """sharegpt: {"conversations": [{"from": "system|human|gpt", "value": ...}, ...]}."""
    items = _typed(record, "conversations", list, "", line)
    if items is None:
        return []
    messages = _messages(items, "conversations", line, SHAREGPT_ROLES, keys=("from", "value"))
    _check_conversation(messages, "conversations", line, role_key="from")
    return messages


def _from_prompt_completion(record: dict, line: _Line) -> list[dict]:
    """{"prompt": ..., "completion": ..., "system"?: ...} as a user turn and an assistant turn."""
    prompt = _text(record, "prompt", "", line)
    completion = _text(record, "completion", "", line)
    return _with_system(record, line, [{"role": "user", "content": prompt},
                                       {"role": "assistant", "content": completion}])


def _from_alpaca(record: dict, line: _Line) -> list[dict]:
    """alpaca: {"instruction", "input"?, "output", "system"?}; instruction, blank line, input = user turn."""
    instruction = _text(record, "instruction", "", line)
    extra = _text(record, "input", "", line, required=False)
    output = _text(record, "output", "", line)
    user = f"{instruction}\n\n{extra}" if instruction and extra and extra.strip() else instruction
    return _with_system(record, line, [{"role": "user", "content": user},
                                       {"role": "assistant", "content": output}])


def _reply(record: dict, key: str, line: _Line) -> dict | None:
    """A DPO output: a list holding exactly one assistant message."""
    items = _typed(record, key, list, "", line)
    if items is None:
        return None
    if len(items) != 1:
        line.error(key, f"must hold exactly one assistant message, got {len(items)}")
        return None
    return _message(items[0], f"{key}[0]", line, {"assistant": "assistant"}, ("role", "content"),
                    weight_allowed=False)


def _from_dpo(record: dict, line: _Line) -> tuple[list[dict], dict | None, dict | None]:
    """OpenAI DPO: {"input": {"messages"}, "preferred_output": [reply], "non_preferred_output": [reply]}."""
    prompt: list[dict] = []
    source = _typed(record, "input", dict, "", line)
    items = _typed(source, "messages", list, "input", line) if source is not None else None
    if items is not None:
        prompt = _messages(items, "input.messages", line, PLAIN_ROLES, weight_allowed=False)
        if prompt and not line.failed and prompt[-1]["role"] != "user":
            line.error(f"input.messages[{len(prompt) - 1}].role",
                       "the prompt must end with the user message that both outputs answer")
    chosen = _reply(record, "preferred_output", line)
    rejected = _reply(record, "non_preferred_output", line)
    if chosen and rejected and chosen["content"] == rejected["content"]:
        line.warn("non_preferred_output[0].content",
                  "is identical to preferred_output, so the pair teaches nothing")
    return prompt, chosen, rejected


CONVERTERS: dict[str, Callable[[dict, _Line], list[dict]]] = {
    "prompt_completion": _from_prompt_completion,
    "alpaca": _from_alpaca,
    "sharegpt": _from_sharegpt,
}


def detect_shape(record: dict) -> str | None:
    """The format whose characteristic keys a JSON object has, or None."""
    if "messages" in record:
        return "chat"
    if "preferred_output" in record or "non_preferred_output" in record:
        return "dpo"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record or "output" in record:
        return "alpaca"
    if "prompt" in record or "completion" in record:
        return "prompt_completion"
    return None


def _decode(raw: bytes, line: _Line) -> Any:
    """One JSONL line parsed to an object, or None with the reason reported."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line.error("", f"line {line.number} is not valid UTF-8 text (byte {error.start + 1}); "
                   "save the file as UTF-8")
        return None
    try:
        record = json.loads(text)
    except RecursionError:
        line.error("", f"line {line.number} is nested too deeply (arrays or objects inside each other beyond what "
                   "can be read); each line must hold one example object")
        return None
    except json.JSONDecodeError as error:
        line.error("", f"line {line.number} is not valid JSON: {error.msg} at column {error.colno}; "
                   "each line must hold one complete JSON object (JSONL)")
        return None
    except ValueError:  # json's only other error: an integer longer than Python's 4300-digit limit
        line.error("", f"line {line.number} holds a number too long to read; write very long numbers as strings")
        return None
    if not isinstance(record, dict):
        line.error("", f"line {line.number} is {_kind(record)}, not a JSON object; each line must be one "
                   'object such as {"messages": [...]}')
        return None
    return record


def _example(fmt: str, record: dict, line: _Line, source: str) -> Example | PreferenceExample | None:
    """Convert one record of a known format; None when the line has an error."""
    if fmt == "dpo":
        prompt, chosen, rejected = _from_dpo(record, line)
        return None if line.failed else PreferenceExample(prompt, chosen, rejected, source, line.number)
    if fmt == "chat":
        messages, tools, parallel = _from_chat(record, line)
        return None if line.failed else Example(messages, source, line.number, fmt, _lineage(record), tools,
                                                parallel)
    messages = CONVERTERS[fmt](record, line)
    return None if line.failed else Example(messages, source, line.number, fmt, _lineage(record))


def _lineage(record: dict) -> dict | None:
    """Where a distilled example came from (`hone distill` writes it); other metadata is not carried along."""
    metadata = record.get("metadata")
    found = metadata.get("distill") if isinstance(metadata, dict) else None
    return {"distill": found} if isinstance(found, dict) else None


def _open(path: Path) -> bytes:
    """The file's bytes without a UTF-8 byte order mark; a missing or empty file is an error that stops everything."""
    if not path.is_file():
        raise HoneError(f"dataset file not found: {path}", hint="check the path; a directory is not accepted")
    data = path.read_bytes().removeprefix(UTF8_BOM)
    if not data.strip():
        raise HoneError(f"dataset file is empty: {path}",
                        hint="write one JSON object per line (or, for a .csv file, a header and rows)")
    return data


def _wide_ascii(sample: bytes, width: int, text_at: int) -> bool:
    """ASCII in a `width`-byte encoding: the byte at `text_at` of each unit is rarely NUL, each other mostly is."""
    units = len(sample) // width
    if units < 2:
        return False
    nuls = [sample[i:units * width:width].count(0) for i in range(width)]
    return nuls[text_at] <= units // 20 and all(n >= units / 2 for i, n in enumerate(nuls) if i != text_at)


def wide_encoding(data: bytes) -> str | None:
    """The UTF-16/UTF-32 encoding of `data` as iconv names it, from a byte order mark or where NUL bytes fall."""
    for bom, name in WIDE_BOMS:
        if data.startswith(bom):
            return name  # iconv reads the byte order from the mark
    sample = data[:4096]
    if b"\0" not in sample:
        return None
    for width in (4, 2):  # UTF-32 first: UTF-16 text would pass neither of its patterns
        for order, text_at in (("LE", 0), ("BE", width - 1)):
            if _wide_ascii(sample, width, text_at):
                return f"UTF-{8 * width}{order}"
    return None


def _encoding_problem(data: bytes, path: Path) -> str | None:
    """What to tell the user when the file is UTF-16/UTF-32 rather than UTF-8."""
    name = wide_encoding(data)
    if name is None:
        return None
    converted = path.with_name(f"{path.stem}.utf8{path.suffix}")
    return (f"the file is {name[:6]} encoded; save it as UTF-8 (e.g. iconv -f {name} -t UTF-8 "
            f"{shlex.quote(str(path))} > {shlex.quote(str(converted))})")


def _array_problem(data: bytes, path: Path) -> str | None:
    """One message for a file that is a single JSON array (an export), instead of an error per line."""
    start = data.lstrip()
    if not start.startswith(b"["):
        return None
    converted = path.with_name(f"{path.stem}{'.lines' if path.suffix == '.jsonl' else ''}.jsonl")
    message = (f"this is a JSON array, write one object per line (JSON Lines); convert it with "
               f"jq -c '.[]' {shlex.quote(str(path))} > {shlex.quote(str(converted))}")
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        # A first line of just "[" opens a pretty-printed array even when a later line breaks it.
        return f"{message} (and fix its JSON)" if start.split(b"\n", 1)[0].strip() == b"[" else None
    return message if isinstance(value, list) and any(isinstance(item, dict) for item in value) else None


def _whole_file_problem(data: bytes, path: Path) -> Problem | None:
    """A problem of the whole file that would otherwise show up as an error on every line."""
    message = _encoding_problem(data, path) or _array_problem(data, path)
    return Problem(0, "", message) if message else None


def _read_jsonl(path: Path) -> Dataset:
    data = _open(path)
    problem = _whole_file_problem(data, path)
    if problem is not None:
        return Dataset(str(path), "unknown", [], [problem], lines_read=0, blank_lines=0)
    raw_lines = data.split(b"\n")
    if raw_lines[-1] == b"":
        raw_lines.pop()  # the newline that ends the last line does not start another
    lines = {n: _Line(n) for n, raw in enumerate(raw_lines, start=1) if raw.strip()}
    records = {n: _decode(raw_lines[n - 1], line) for n, line in lines.items()}
    shapes = {n: detect_shape(record) for n, record in records.items() if record is not None}
    detected = next(((n, shape) for n, shape in shapes.items() if shape), None)
    fmt = detected[1] if detected else "unknown"
    examples = []
    for number, shape in shapes.items():
        line, record = lines[number], records[number]
        if detected is None:
            line.error("", "matches no known format: expected the keys of OpenAI chat (messages), DPO "
                       "(input, preferred_output, non_preferred_output), prompt/completion, alpaca "
                       "(instruction, output) or sharegpt (conversations)")
        elif shape is not None and shape != fmt:
            line.error("", f"this line is {shape} format but the file is {fmt} format (detected from line "
                       f"{detected[0]}); use one format per file")
        elif (example := _example(fmt, record, line, str(path))) is not None:
            examples.append(example)
    problems = [p for line in lines.values() for p in line.problems]
    return Dataset(str(path), fmt, examples, problems, lines_read=len(lines),
                   blank_lines=len(raw_lines) - len(lines))


def _csv_shape(header: list[str], column_map: dict[str, str] | None, path: Path) -> tuple[str, dict]:
    """The record shape and a {field: column} map, from the user's map or the header's column names."""
    if column_map is None:
        for shape, (required, optional) in CSV_SHAPES.items():
            if set(required) <= set(header):
                return shape, {f: f for f in required + optional if f in header}
        raise HoneError(f"{path}: the header ({', '.join(header)}) has neither prompt/completion nor "
                        "instruction/output columns",
                        hint="rename the columns or map them: {'prompt': 'question', 'completion': 'answer'}")
    unknown = sorted(column_map.keys() - set(CSV_FIELDS))
    if unknown:
        raise HoneError(f"unknown field(s) in the CSV column map: {', '.join(unknown)}",
                        hint=f"map these fields to columns: {', '.join(CSV_FIELDS)}")
    shape = next((name for name, (required, optional) in CSV_SHAPES.items()
                  if set(required) <= column_map.keys() <= set(required + optional)), None)
    if shape is None:
        raise HoneError(f"{path}: the CSV column map {column_map} must name prompt and completion (and "
                        "optionally system), or instruction and output (and optionally input, system)")
    missing = [f"{column!r} (for {name})" for name, column in column_map.items() if column not in header]
    if missing:
        raise HoneError(f"{path}: column {', '.join(missing)} is not in the header",
                        hint=f"the columns are: {', '.join(header)}")
    return shape, dict(column_map)


def _read_csv(path: Path, column_map: dict[str, str] | None) -> Dataset:
    data = _open(path)
    wide = _encoding_problem(data, path)
    if wide:
        raise HoneError(f"{path}: {wide}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise HoneError(f"{path} is not valid UTF-8 text (byte {error.start + 1})",
                        hint="save the file as UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader)
    shape, mapping = _csv_shape(header, column_map, path)
    examples, problems, rows, blank, start = [], [], 0, 0, reader.line_num + 1
    for row in reader:
        line, start = _Line(start), reader.line_num + 1
        if not any(cell.strip() for cell in row):
            blank += 1
            continue
        rows += 1
        if len(row) != len(header):
            line.error("", f"row has {len(row)} fields but the header has {len(header)} columns; "
                       "quote fields that contain commas")
        else:
            record = {name: row[header.index(column)] for name, column in mapping.items()}
            messages = CONVERTERS[shape](record, line)
            if not line.failed:
                examples.append(Example(messages, str(path), line.number, "csv"))
        # Name the user's column, not hone's field, in each problem.
        problems += [Problem(p.line, mapping.get(p.field, p.field), p.message, p.severity)
                     for p in line.problems]
    return Dataset(str(path), "csv", examples, problems, lines_read=rows, blank_lines=blank)


def read_dataset(path: str | Path, column_map: dict[str, str] | None = None) -> Dataset:
    """Read every line of a dataset file; bad lines become `Problem`s, never exceptions.

    `column_map` applies to `.csv` files: {field: column} with fields prompt/completion/system or
    instruction/input/output/system. Raises HoneError only when the file is missing, empty or (CSV) its
    columns cannot be mapped.
    """
    path = Path(path)
    return _read_csv(path, column_map) if path.suffix.lower() == ".csv" else _read_jsonl(path)


def _load(path: str | Path, column_map: dict[str, str] | None, want_preferences: bool) -> Dataset:
    """Read a file for training, raising a HoneError that lists the first problems if any line is broken."""
    dataset = read_dataset(path, column_map)
    is_dpo = dataset.format == "dpo"
    if dataset.format != "unknown" and want_preferences != is_dpo:
        raise HoneError(f"{path} holds {HOLDS[is_dpo]}, but {HOLDS[want_preferences]} are needed here",
                        hint="DPO training takes preference pairs; supervised training and evaluation take "
                        "conversations")
    errors = dataset.errors
    if errors:
        shown = "\n".join(f"  {path}:{p.line}: {p.field or '(line)'}: {p.message}"
                          for p in errors[:SHOWN_PROBLEMS])
        more = f"\n  ... and {len(errors) - SHOWN_PROBLEMS} more" if len(errors) > SHOWN_PROBLEMS else ""
        raise HoneError(f"{path}: {len(errors)} line(s) cannot be used:\n{shown}{more}",
                        hint=f"fix them (`hone data validate {path}` lists every problem)")
    return dataset


def load_chat_examples(path: str | Path, column_map: dict[str, str] | None = None) -> list[Example]:
    """Every conversation of a chat-like (not DPO) file; raises HoneError listing the problems if any."""
    return _load(path, column_map, want_preferences=False).examples


def load_preference_examples(path: str | Path) -> list[PreferenceExample]:
    """Every preference pair of a DPO file; raises HoneError listing problems if any line is broken."""
    return _load(path, None, want_preferences=True).examples
