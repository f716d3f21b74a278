"""Tool-calling data (OpenAI `tools`, `tool_calls`, `tool` messages): every defect reported at its line and field,
the calls trained and the tool list and results not, in the model's own tool format or hone's default one."""

from __future__ import annotations

import json
import math
from pathlib import Path

from test_train import make_config
from transformers import AutoTokenizer
from typer.testing import CliRunner

from hone.cli import app
from hone.data.curate.prepare import PrepareConfig, prepare
from hone.data.formats import read_dataset
from hone.data.render import render_chat, render_tool_call, render_tool_response, tool_system_prompt
from hone.models import load_tokenizer
from hone.train.config import load_config
from hone.train.run import train

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ORDER = {"type": "function", "function": {
    "name": "find_order", "parameters": {"type": "object", "properties": {"id": {"type": "integer"}}}}}
TOOLS = [WEATHER, ORDER]
CITIES = ["Paris", "Rome", "Oslo", "Lima", "Kyiv", "Doha", "Riga", "Bern", "Nice", "Bonn", "Pisa", "Metz"]


def call(call_id: str, name: str = "get_weather", arguments: object = None) -> dict:
    """One OpenAI tool call; `arguments` is JSON-encoded unless it is already a string (or given raw as a list)."""
    encoded = arguments if isinstance(arguments, str | list) else json.dumps(arguments or {"city": "Paris"})
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": encoded}}


def calling(*calls: dict, **extra) -> dict:
    return {"role": "assistant", "content": None, "tool_calls": list(calls), **extra}


def answer(call_id: str, content: str = "sunny") -> dict:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


USER = {"role": "user", "content": "weather in Paris?"}
FINAL = {"role": "assistant", "content": "It is sunny in Paris."}


def conversation(*messages: dict, tools: list | None = None, **extra) -> dict:
    return {"tools": TOOLS if tools is None else tools, "messages": [USER, *messages], **extra}


def one_call(*calls: dict, **extra) -> dict:
    """The user asks, the assistant makes `calls`, each is answered, the assistant answers."""
    return conversation(calling(*calls), *(answer(c["id"]) for c in calls), FINAL, **extra)


def two_cities(first: str, second: str) -> dict:
    """A valid conversation: two parallel calls, their answers and a final answer."""
    return conversation(
        calling(call("call_1", arguments={"city": first}), call("call_2", arguments={"city": second})),
        answer("call_1", f"{first}: sunny"), answer("call_2", f"{second}: rain"),
        {"role": "assistant", "content": f"{first} is sunny, {second} has rain."},
        parallel_tool_calls=True)


def write_lines(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


PLAIN = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
BROKEN = [  # one defect per line, numbered from 1
    two_cities("Paris", "Rome"),                                                                        # 1 valid
    one_call(call("a", "get_wether")),                                                                  # 2
    one_call(call("a", arguments=["not", "a", "string"])),                                              # 3
    one_call(call("a", arguments='{"city": "Paris"')),                                                  # 4
    one_call(call("a", arguments="[1, 2]")),                                                            # 5
    one_call(call("a", arguments={"city": 3})),                                                         # 6
    one_call(call("a", arguments={"town": "Paris"})),                                                   # 7
    conversation(calling(call("a")), answer("b"), FINAL),                                               # 8
    conversation(calling(call("a"), call("b")), answer("a"), FINAL),                                    # 9
    one_call(call("a"), call("a", arguments={"city": "Rome"})),                                         # 10
    {"tools": [{"type": "function", "function": {"parameters": {"type": "object"}}}], "messages": PLAIN},  # 11
    {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}],
     "messages": PLAIN},                                                                                # 12
    {"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "strng"}}}}}], "messages": PLAIN},               # 13
    one_call(call("a"), call("b", arguments={"city": "Rome"}), parallel_tool_calls=False),              # 14
    conversation(calling(call("a")), answer("a", " "), FINAL),                                          # 15
    {"tools": TOOLS, "messages": [{**USER, "tool_calls": [call("a")]}, FINAL]},                          # 16
    conversation(calling(call("a")), answer("a")),                                                      # 17
    {"messages": [USER, calling(call("a")), answer("a"), FINAL]},                                       # 18
    conversation(calling(call("a"), weight=0)),                                                         # 19 valid
]
EXPECTED = [  # (line, field, words in the message) of every error
    (2, "messages[1].tool_calls[0].function.name", "unknown function 'get_wether'; the tools define: get_weather, "
     "find_order"),
    (3, "messages[1].tool_calls[0].function.arguments", "must be a string holding JSON"),
    (4, "messages[1].tool_calls[0].function.arguments", "is not valid JSON"),
    (5, "messages[1].tool_calls[0].function.arguments", "must encode a JSON object of named arguments, got an array"),
    (6, "messages[1].tool_calls[0].function.arguments", "argument 'city': 3 is not of type 'string'"),
    (7, "messages[1].tool_calls[0].function.arguments", "'city' is a required property"),
    (8, "messages[2].tool_call_id", "'b' answers no call; the calls waiting for an answer are 'a'"),
    (8, "messages[1].tool_calls[0].id", "call 'a' is never answered"),
    (9, "messages[1].tool_calls[1].id", "call 'b' is never answered; add a tool message with \"tool_call_id\": \"b\""),
    (10, "messages[1].tool_calls[1].id", "duplicate call id 'a'"),
    (11, "tools[0].function.name", "missing key 'name'"),
    (12, "tools[0].function.parameters", 'must be a JSON Schema of an object'),
    (13, "tools[0].function.parameters", "is not a valid JSON Schema: 'strng' is not valid"),
    (14, "messages[1].tool_calls", "holds 2 calls but parallel_tool_calls is false"),
    (15, "messages[2].content", "a tool message needs content"),
    (16, "messages[0].tool_calls", "tool_calls is only allowed on assistant messages"),
    (17, "messages[2].role", "ends with a tool message"),
    (18, "messages[1].tool_calls[0].function.name", "the conversation has no \"tools\" list"),
]
VALIDATE = ["data", "validate", "--max-length", "4096", "--json"]


def validate(path: Path, model_dir: Path) -> tuple[int, dict]:
    result = CliRunner().invoke(app, [*VALIDATE, "--model", str(model_dir), str(path)])
    return result.exit_code, json.loads(result.stdout)


def test_each_tool_defect_is_reported_at_its_line_and_field(tmp_path, tiny_model_dir):
    code, report = validate(write_lines(tmp_path / "broken.jsonl", BROKEN), tiny_model_dir)
    assert code == 1
    errors = [p for p in report["problems"] if p["severity"] == "error"]
    assert [(p["line"], p["field"]) for p in errors] == [(line, field) for line, field, _ in EXPECTED]
    for problem, (_, _, words) in zip(errors, EXPECTED, strict=True):
        assert words in problem["message"], problem
    assert report["stats"]["examples"] == 2  # lines 1 and 19; every other line is left out


def test_parallel_calls_with_answers_and_final_answer_validate_clean(tmp_path, tiny_model_dir):
    lines = [two_cities(CITIES[i], CITIES[-1 - i]) for i in range(len(CITIES))]
    code, report = validate(write_lines(tmp_path / "tools.jsonl", lines), tiny_model_dir)
    assert code == 0, report["problems"]
    assert report["ok"] and report["problems"] == []
    assert report["stats"]["tool_calls"] == 2 * len(CITIES)
    [example, *_] = read_dataset(tmp_path / "tools.jsonl").examples
    assert example.tools == TOOLS and example.parallel_tool_calls is True
    assert example.messages[1] == {"role": "assistant", "content": "", "tool_calls": lines[0]["messages"][1][
        "tool_calls"]}
    assert example.messages[2] == {"role": "tool", "content": "Paris: sunny", "tool_call_id": "call_1"}


def read_examples(folder: Path, lines: list[dict]) -> list:
    dataset = read_dataset(write_lines(folder / "examples.jsonl", lines))
    assert not dataset.errors, dataset.errors
    return dataset.examples


def trained_text(tokenizer, rendered) -> str:
    return tokenizer.decode([t for t, m in zip(rendered.input_ids, rendered.trained, strict=True) if m])


def untrained_text(tokenizer, rendered) -> str:
    return tokenizer.decode([t for t, m in zip(rendered.input_ids, rendered.trained, strict=True) if not m])


def test_default_format_trains_the_calls_and_answer_not_the_tools_or_results(tmp_path, tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    [example] = read_examples(tmp_path, [two_cities("Paris", "Rome")])
    rendered = render_chat(tokenizer, example.messages, example.tools)
    calls = example.messages[1]["tool_calls"]
    assert trained_text(tokenizer, rendered) == (
        f"{render_tool_call(calls[0])}\n{render_tool_call(calls[1])}<|im_end|>\n"
        "Paris is sunny, Rome has rain.<|im_end|>\n")
    assert render_tool_call(calls[0]) == ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
                                          "</tool_call>")
    untrained = untrained_text(tokenizer, rendered)
    assert f"<|im_start|>system\n{tool_system_prompt(TOOLS)}<|im_end|>" in untrained
    assert json.dumps(WEATHER) in untrained
    results = f"{render_tool_response('Paris: sunny')}\n{render_tool_response('Rome: rain')}"
    assert f"<|im_start|>user\n{results}<|im_end|>" in untrained


def test_a_system_message_keeps_its_text_before_the_tool_list(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    messages = [{"role": "system", "content": "Be brief."}, USER, calling(call("a")), answer("a"), FINAL]
    rendered = render_chat(tokenizer, messages, TOOLS)
    assert rendered.text.startswith(f"<|im_start|>system\nBe brief.\n\n{tool_system_prompt(TOOLS)}<|im_end|>\n")
    assert rendered.text.count("<|im_start|>system") == 1


# A template with its own tool format: the tool list in the system turn, calls as `CALL name {arguments}`
# (transformers renders with trim_blocks, so a newline right after a tag is written as an expression).
TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTOOLS:{% for tool in tools %}{{ '\\n' + tool.function.name }}: "
    "{{ tool.function.description }}{% endfor %}<|im_end|>\n{% endif %}"
    "{% for message in messages %}"
    "{% if message.role == 'tool' %}<|im_start|>tool\n{{ message.tool_call_id }}={{ message.content }}<|im_end|>\n"
    "{% elif message.tool_calls %}<|im_start|>assistant\n{{ message.content }}{% for c in message.tool_calls %}"
    "CALL {{ c.function.name }} {{ c.function.arguments | tojson }}\n{% endfor %}<|im_end|>\n"
    "{% else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_a_template_with_tool_support_renders_tools_itself(tmp_path, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)  # a copy: the cached tokenizer keeps its template
    tokenizer.chat_template = TOOL_TEMPLATE
    [example] = read_examples(tmp_path, [two_cities("Paris", "Rome")])
    rendered = render_chat(tokenizer, example.messages, example.tools)
    assert trained_text(tokenizer, rendered) == ('CALL get_weather {"city": "Paris"}\nCALL get_weather '
                                                 '{"city": "Rome"}\n<|im_end|>\nParis is sunny, Rome has rain.'
                                                 "<|im_end|>\n")
    untrained = untrained_text(tokenizer, rendered)
    assert "TOOLS:\nget_weather: Current weather in a city\nfind_order: <|im_end|>" in untrained
    assert "call_1=Paris: sunny" in untrained and "<tools>" not in rendered.text


def test_a_template_that_mentions_tools_but_drops_them_gets_the_default_format(tmp_path, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = "{# tools are not supported #}" + tokenizer.chat_template
    [example] = read_examples(tmp_path, [two_cities("Paris", "Rome")])
    rendered = render_chat(tokenizer, example.messages, example.tools)
    assert trained_text(tokenizer, rendered).startswith(render_tool_call(example.messages[1]["tool_calls"][0]))
    assert tool_system_prompt(TOOLS) in rendered.text


def tool_lines(count: int, offset: int = 0) -> list[dict]:
    return [two_cities(CITIES[(i + offset) % len(CITIES)], CITIES[(i + offset + 5) % len(CITIES)])
            for i in range(count)]


def test_hone_train_learns_from_tool_calling_data_and_dry_run_shows_the_calls(tmp_path, tiny_model_dir):
    path = make_config(tmp_path, tiny_model_dir, max_steps=2, eval_every=2)
    write_lines(tmp_path / "train.jsonl", tool_lines(8))
    write_lines(tmp_path / "eval.jsonl", tool_lines(2, offset=3))
    settings = ["data.max_length=1024"]
    dry = CliRunner().invoke(app, ["train", str(path), "--dry-run", "--no-estimate", "--json",
                                   *(f"--set={s}" for s in settings)])
    assert dry.exit_code == 0, dry.output
    plan = json.loads(dry.stdout)
    trained = "".join(text for text, flag in plan["example"]["segments"] if flag)
    assert trained.startswith('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}')
    assert "<tool_response>" not in trained and "<tools>" not in trained
    assert plan["examples"]["train"] == 8 and not plan["examples"]["skipped"]

    run_dir = train(load_config(path, settings), show_progress=False)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [m["train_loss"] for m in metrics if "train_loss" in m]
    assert len(losses) == 2 and all(math.isfinite(loss) and loss > 0 for loss in losses)
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_prepare_keeps_the_tools_and_calls_so_the_dataset_still_validates(tmp_path, tiny_model_dir):
    raw = write_lines(tmp_path / "raw.jsonl", [two_cities(a, b) for a in CITIES[:6] for b in CITIES[6:]])
    prepare(PrepareConfig(inputs=[{"path": raw}], out=tmp_path / "ds"))
    [record, *_] = [json.loads(line) for line in (tmp_path / "ds" / "train.jsonl").read_text().splitlines()]
    assert record["tools"] == TOOLS and record["parallel_tool_calls"] is True
    assert [m["role"] for m in record["messages"]] == ["user", "assistant", "tool", "tool", "assistant"]
    code, report = validate(tmp_path / "ds" / "train.jsonl", tiny_model_dir)
    assert code == 0 and report["counts"]["errors"] == 0, report["problems"]


def test_pii_inside_tool_call_arguments_is_masked_and_the_arguments_stay_valid_json(tmp_path, tiny_model_dir):
    recipients = {"to": {"type": "string"}, "cc": {"type": "array", "items": {"type": "string"}}}
    email = {"type": "function", "function": {"name": "email_customer", "parameters": {
        "type": "object", "properties": recipients, "required": ["to"]}}}
    rows = [conversation(calling(call(f"call_{i}", "email_customer",
                                      {"to": f"jane.doe{i}@example.com", "cc": [f"+1 415 555 01{i:02d}"]})),
                         answer(f"call_{i}", "sent"), {"role": "assistant", "content": f"Mail {i} sent."},
                         tools=[email]) for i in range(12)]
    prepare(PrepareConfig(inputs=[{"path": write_lines(tmp_path / "raw.jsonl", rows)}], out=tmp_path / "ds"))
    text = "".join((tmp_path / "ds" / f"{split}.jsonl").read_text() for split in ("train", "val", "test"))
    assert "example.com" not in text and "555 01" not in text
    arguments = [json.loads(m["tool_calls"][0]["function"]["arguments"]) for line in text.splitlines()
                 for m in json.loads(line)["messages"] if m.get("tool_calls")]
    assert len(arguments) == 12 and all(a["to"] != "" and isinstance(a["cc"], list) for a in arguments)
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    pii = next(step for step in manifest["steps"] if step["name"] == "pii")
    assert pii["counts"]["EMAIL_ADDRESS"] == 12 and pii["counts"]["examples_with_pii"] == 12
    code, report = validate(tmp_path / "ds" / "train.jsonl", tiny_model_dir)
    assert code == 0 and report["counts"]["errors"] == 0, report["problems"]
