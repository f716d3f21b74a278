"""The agents example (examples/agents/): its data passes `hone data validate`, and its agent runs tool calls."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from hone.data.validate import validate_file

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "agents"


def load(name: str):
    """A module of the example, imported from its file (the example is not a package)."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        spec = importlib.util.spec_from_file_location(f"agents_{name}", EXAMPLE / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(EXAMPLE))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("agents")
    subprocess.run([sys.executable, str(EXAMPLE / "make_data.py"), "--out", str(out)], check=True,
                   capture_output=True)
    return out


def lines(path: Path) -> list[dict]:
    return [json.loads(text) for text in path.read_text().splitlines()]


def test_make_data_is_deterministic_and_keeps_test_requests_out_of_train(data, tmp_path):
    subprocess.run([sys.executable, str(EXAMPLE / "make_data.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    assert (tmp_path / "train.jsonl").read_bytes() == (data / "train.jsonl").read_bytes()
    train, test = lines(data / "train.jsonl"), lines(data / "test.jsonl")
    assert (len(train), len(test)) == (300, 60)
    calls_in_train = {line["messages"][1]["content"] for line in train if "tool_calls" in line["messages"][-1]}
    assert not calls_in_train & {line["messages"][1]["content"] for line in test}
    text_answers = sum("tool_calls" not in line["messages"][-1] for line in train)
    assert 0.08 < text_answers / len(train) < 0.25


def test_every_line_passes_validation_with_one_strict_call_or_a_text_answer(data, tiny_model_dir):
    for name, count in (("train", 300), ("test", 60)):
        report = validate_file(data / f"{name}.jsonl", model=str(tiny_model_dir), max_length=100_000)
        assert report.errors == [] and report.stats["examples"] == count, report.errors[:3]
        for line in lines(data / f"{name}.jsonl"):
            tools = {tool["function"]["name"]: tool["function"]["parameters"] for tool in line["tools"]}
            assert len(tools) == 4
            for schema in tools.values():
                assert schema["additionalProperties"] is False and schema["required"] == list(schema["properties"])
            answer = line["messages"][-1]
            if "tool_calls" in answer:
                (call,) = answer["tool_calls"]
                jsonschema.validate(json.loads(call["function"]["arguments"]), tools[call["function"]["name"]])
            else:
                assert answer["content"]


def test_validation_rejects_arguments_outside_the_strict_schema(data, tmp_path, tiny_model_dir):
    line = next(line for line in lines(data / "train.jsonl") if '"get_order_status"' in json.dumps(line["messages"]))
    bad = []
    for arguments in ({"order_id": "12345"}, {"order_id": 12345, "city": "York"}, {"order_id": 123}):
        line["messages"][-1]["tool_calls"][0]["function"]["arguments"] = json.dumps(arguments)
        bad.append(json.dumps(line))
    (tmp_path / "bad.jsonl").write_text("\n".join(bad) + "\n")
    report = validate_file(tmp_path / "bad.jsonl", model=str(tiny_model_dir))
    assert [(p.line, p.field) for p in report.errors] == [
        (n, "messages[2].tool_calls[0].function.arguments") for n in (1, 2, 3)]
    messages = [p.message for p in report.errors]
    assert "is not of type 'integer'" in messages[0] and "'city' was unexpected" in messages[1]
    assert "less than the minimum" in messages[2]


def test_agent_functions_execute_tool_calls_against_the_fake_database():
    agent = load("agent")

    def call(name: str, **arguments) -> dict:
        return json.loads(agent.run_tool_call(
            {"id": "call_1", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}))

    assert call("get_order_status", order_id=12345) == {"order_id": 12345, "item": "kettle", "status": "shipped",
                                                        "eta": "Thursday"}
    assert call("get_order_status", order_id=99999) == {"error": "no order 99999"}
    assert call("update_address", order_id=34567, city="York") == {"order_id": 34567, "city": "York",
                                                                   "status": "packing"}
    assert agent.ORDERS[34567]["city"] == "York"
    assert "already delivered" in call("update_address", order_id=23456, city="Bath")["error"]
    assert call("refund_order", order_id=23456, reason="damaged") == {"order_id": 23456, "refunded": 64.5,
                                                                      "reason": "damaged"}
    assert agent.ORDERS[23456]["status"] == "refunded"
    assert call("talk_to_human", topic="billing")["team"] == "billing"
    assert "unknown function" in call("delete_everything")["error"]
    assert "bad arguments" in call("refund_order", order_id=12345)["error"]  # reason missing
    bad_json = agent.run_tool_call({"id": "c", "type": "function", "function": {"name": "talk_to_human",
                                                                                  "arguments": "{topic"}})
    assert "bad arguments" in json.loads(bad_json)["error"]


class ScriptedClient:
    """Stands in for `openai.OpenAI`: answers each `chat.completions.create` with the next scripted message and
    records the requests."""

    def __init__(self, replies: list[dict]):
        self.replies, self.requests = list(replies), []
        self.chat = self.completions = self

    def create(self, **request):
        from openai.types.chat import ChatCompletion

        self.requests.append(json.loads(json.dumps(request)))
        message = self.replies.pop(0)
        return ChatCompletion.model_validate({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": request["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", **message},
                         "finish_reason": "tool_calls" if message.get("tool_calls") else "stop"}]})


def tool_reply(name: str, arguments: dict) -> dict:
    return {"content": None, "tool_calls": [{"id": "call_7", "type": "function", "function": {
        "name": name, "arguments": json.dumps(arguments)}}]}


def test_agent_loop_sends_each_result_back_and_stops_a_repeated_call():
    agent = load("agent")
    client = ScriptedClient([tool_reply("get_order_status", {"order_id": 12345}), {"content": "It ships Thursday."}])
    assert agent.answer(client, "router", "Where is order 12345?", log=lambda _: None) == "It ships Thursday."
    first, second = client.requests
    assert first["tools"] == agent.TOOLS and first["tool_choice"] == "auto"
    assert second["messages"][-2]["tool_calls"][0]["function"]["name"] == "get_order_status"
    assert second["messages"][-1] == {"role": "tool", "tool_call_id": "call_7", "content": json.dumps(
        {"order_id": 12345, "item": "kettle", "status": "shipped", "eta": "Thursday"})}

    repeat = tool_reply("refund_order", {"order_id": 23456, "reason": "damaged"})
    client = ScriptedClient([repeat, repeat, {"content": "Refunded 64.50."}])
    assert agent.answer(client, "router", "Refund 23456, it broke", log=lambda _: None) == "Refunded 64.50."
    assert [r["tool_choice"] for r in client.requests] == ["auto", "auto", "none"]
    assert sum(m["role"] == "tool" for m in client.requests[-1]["messages"]) == 1  # refunded once, not twice
