"""`hone eval` on tool calling and structured outputs: the tool-call scores on hand-written replies, tools shown to
the model and calls scored in a run on the tiny model, response_format held by constrained decoding (local) or sent
in the request (endpoint), and the judge asking for its verdict with a JSON Schema where the endpoint takes one."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jsonschema
import pytest
from conftest import serve_app
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from hone.errors import HoneError
from hone.eval import evaluate, judge, run
from hone.eval.config import CandidateConfig, validate_eval_config
from hone.eval.endpoint import make_client
from hone.eval.judge import JudgeConfig, JudgeItem, judge_candidates, rate_reply
from hone.eval.prompting import EvalCase
from hone.eval.tool_calls import tool_call_scores
from hone.eval.verdict import default_primary_metric
from hone.models import load_tokenizer

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather forecast for a city",
    "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]},
                                                    "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                   "required": ["city", "days"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Local time in a city",
    "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}}, "required": ["city"],
                   "additionalProperties": False}}}
ORDER_SCHEMA = {"type": "object", "properties": {"status": {"enum": ["open", "shipped"]},
                                                 "id": {"type": "integer", "minimum": 0, "maximum": 999}},
                "required": ["status", "id"], "additionalProperties": False}
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "order", "schema": ORDER_SCHEMA}}


def call(name: str, arguments: dict) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


PARIS_3 = [("get_weather", {"city": "Paris", "days": 3})]


# --- the scores on hand-written replies -------------------------------------------------------------------------

def test_right_call_scores_full_marks_with_any_json_spacing():
    reply = '<tool_call>\n{"name":"get_weather","arguments":{"days":3.0,"city":"Paris"}}\n</tool_call>'
    assert tool_call_scores(reply, PARIS_3) == {"tool_name_accuracy": 1.0, "tool_arguments_exact": 1.0,
                                                "tool_argument_accuracy": 1.0, "no_call_accuracy": 1.0,
                                                "tool_call_parse_rate": 1.0}


def test_wrong_function_scores_no_name_and_no_arguments():
    scores = tool_call_scores(call("get_time", {"city": "Paris"}), PARIS_3)
    assert scores == {"tool_name_accuracy": 0.0, "tool_arguments_exact": 0.0, "tool_argument_accuracy": 0.0,
                      "no_call_accuracy": 1.0, "tool_call_parse_rate": 1.0}


def test_wrong_argument_keeps_the_name_and_the_other_arguments():
    scores = tool_call_scores(call("get_weather", {"city": "Oslo", "days": 3}), PARIS_3)
    assert scores["tool_name_accuracy"] == 1.0 and scores["tool_arguments_exact"] == 0.0
    assert scores["tool_argument_accuracy"] == 0.5  # days right, city wrong
    missing = tool_call_scores(call("get_weather", {"city": "Paris"}), PARIS_3)
    assert missing["tool_arguments_exact"] == 0.0 and missing["tool_argument_accuracy"] == 0.5
    typed = tool_call_scores(call("get_weather", {"city": "Paris", "days": True}), [("get_weather",
                                                                                     {"city": "Paris", "days": 1})])
    assert typed["tool_argument_accuracy"] == 0.5  # true is not 1


def test_extra_call_is_wrong_on_names_and_exactness_but_keeps_the_argument_share():
    reply = call("get_weather", {"city": "Paris", "days": 3}) + "\n" + call("get_time", {"city": "Paris"})
    scores = tool_call_scores(reply, PARIS_3)
    assert scores["tool_name_accuracy"] == 0.0 and scores["tool_arguments_exact"] == 0.0
    assert scores["tool_argument_accuracy"] == 1.0 and scores["no_call_accuracy"] == 1.0


def test_parallel_calls_are_matched_whatever_their_order():
    expected = [("get_weather", {"city": "Paris", "days": 3}), ("get_weather", {"city": "Oslo", "days": 1})]
    reply = call("get_weather", {"city": "Oslo", "days": 1}) + "\n" + call("get_weather", {"city": "Paris", "days": 3})
    assert tool_call_scores(reply, expected)["tool_arguments_exact"] == 1.0
    half = call("get_weather", {"city": "Oslo", "days": 3}) + "\n" + call("get_weather", {"city": "Paris", "days": 1})
    scores = tool_call_scores(half, expected)
    assert scores["tool_name_accuracy"] == 1.0 and scores["tool_arguments_exact"] == 0.0
    assert scores["tool_argument_accuracy"] == 0.5  # the best pairing gets one key of each call right


def test_no_call_expected():
    assert tool_call_scores("It is sunny in Paris.", []) == {
        "tool_name_accuracy": None, "tool_arguments_exact": None, "tool_argument_accuracy": None,
        "no_call_accuracy": 1.0, "tool_call_parse_rate": None}
    assert tool_call_scores(call("get_time", {"city": "Oslo"}), [])["no_call_accuracy"] == 0.0
    assert tool_call_scores("Sure, one moment.", PARIS_3)["no_call_accuracy"] == 0.0


def test_unparsable_block_is_no_call_and_fails_the_parse_rate():
    for broken in ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"\n</tool_call>',
                   '<tool_call>\n{"function": "get_weather"}\n</tool_call>',
                   '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}']:  # unclosed
        scores = tool_call_scores(broken, PARIS_3)
        assert scores["tool_call_parse_rate"] == 0.0 and scores["no_call_accuracy"] == 0.0
        assert scores["tool_name_accuracy"] == 0.0 and scores["tool_argument_accuracy"] == 0.0
    good_then_broken = call("get_weather", {"city": "Paris", "days": 3}) + "\n<tool_call>\nnot json\n</tool_call>"
    scores = tool_call_scores(good_then_broken, PARIS_3)
    assert scores["tool_call_parse_rate"] == 0.0 and scores["tool_arguments_exact"] == 1.0


def test_tool_calling_test_sets_are_decided_on_exact_calls():
    references = [call("get_weather", {"city": "Paris", "days": 3})] * 4 + ["It is sunny."]
    assert default_primary_metric(references).name == "tool_arguments_exact"
    assert default_primary_metric(["It is sunny."] * 4 + [call("get_time", {})]).name == "exact_match"


# --- config -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("response_format", "message"), [
    ({"type": "json"}, "candidates.0.response_format.type: Input should be 'text', 'json_object' or 'json_schema'"),
    ({"type": "json_schema"}, "candidates.0.response_format: type json_schema needs json_schema"),
    ({"type": "json_schema", "json_schema": {"name": "order"}}, "candidates.0.response_format.json_schema.schema: "
     "Field required"),
    ({"type": "json_schema", "json_schema": {"name": "order", "schema": {"type": "thing"}}},
     "candidates.0.response_format.json_schema.schema: not a valid JSON Schema"),
    ({"type": "json_object", "json_schema": {"name": "x", "schema": {}}}, "json_schema is only read with type "
     "json_schema"),
])
def test_response_format_mistakes_name_the_field(response_format, message):
    with pytest.raises(HoneError, match="invalid eval settings") as caught:
        validate_eval_config({"base": "m", "data": "t.jsonl", "out": "o",
                              "candidates": [{"name": "c", "response_format": response_format}]})
    assert message in str(caught.value)


def test_candidates_asking_for_different_schemas_need_one_to_score_against():
    other = {"type": "json_schema", "json_schema": {"name": "other", "schema": {"type": "array"}}}
    with pytest.raises(HoneError, match="set metrics.json_schema"):
        validate_eval_config({"base": "m", "data": "t.jsonl", "out": "o",
                              "candidates": [{"name": "a", "response_format": SCHEMA_FORMAT},
                                             {"name": "b", "response_format": other}]})


def test_reply_grammar_is_the_one_hone_serve_applies():
    from hone.api.protocol import ChatCompletionRequest

    case = EvalCase([{"role": "user", "content": "weather?"}], "", tools=[WEATHER, TIME], parallel_tool_calls=False)
    plain = EvalCase([{"role": "user", "content": "order?"}], "")
    for response_format in (None, {"type": "json_object"}, SCHEMA_FORMAT):
        candidate = CandidateConfig(name="c", response_format=response_format)
        for example in (case, plain):
            request = ChatCompletionRequest(model="m", messages=example.prompt, tools=example.tools,
                                            parallel_tool_calls=example.parallel_tool_calls,
                                            response_format=response_format)
            served = request.output_grammar()
            assert run.reply_grammar(candidate, example) == served, (response_format, example.tools)


# --- eval runs on the tiny model --------------------------------------------------------------------------------

def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def order_chats(count: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"status of order {i}?"},
                          {"role": "assistant", "content": json.dumps({"status": "open", "id": i})}]}
            for i in range(count)]


def test_schema_constrained_candidate_always_matches_the_schema(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "test.jsonl", order_chats(6))
    report = evaluate(base=str(tiny_model_dir), data=data, out=tmp_path / "out", max_new_tokens=40,
                      candidates=[{"name": "free"}, {"name": "schema", "response_format": SCHEMA_FORMAT}],
                      metrics={"perplexity": False, "readability": False}, show_progress=False)

    replies = {name: [e["outputs"][name]["text"] for e in report["examples"]] for name in ("free", "schema")}
    for text in replies["schema"]:
        jsonschema.validate(json.loads(text), ORDER_SCHEMA)
    assert report["aggregates"]["schema"]["json_schema"] == 100.0
    assert report["aggregates"]["schema"]["json_valid"] == 100.0
    assert report["aggregates"]["free"]["json_schema"] < 100.0  # the random model's own replies are not JSON
    comparison = report["comparisons"]["schema"]["json_schema"]
    assert comparison["delta"] > 0 and comparison["ci_low"] <= comparison["delta"] <= comparison["ci_high"]
    assert comparison["mcnemar"]["candidate_only"] >= 1
    assert {c["name"]: c["kind"] for c in report["candidates"]} == {"free": "base", "schema": "base+schema(order)"}
    assert report["config"]["candidates"][1]["response_format"]["json_schema"]["schema"] == ORDER_SCHEMA


def tool_chats() -> list[dict]:
    asks = [("Weather in Paris for 3 days?", [("get_weather", {"city": "Paris", "days": 3})]),
            ("Time in Oslo?", [("get_time", {"city": "Oslo"})]),
            ("Weather in Oslo tomorrow?", [("get_weather", {"city": "Oslo", "days": 1})]),
            ("Time in Paris?", [("get_time", {"city": "Paris"})])]
    chats = [{"messages": [{"role": "user", "content": question},
                           {"role": "assistant", "content": "", "tool_calls": [
                               {"id": f"call_{i}", "type": "function",
                                "function": {"name": name, "arguments": json.dumps(arguments)}}
                               for name, arguments in calls]}],
              "tools": [WEATHER, TIME], "parallel_tool_calls": False} for i, (question, calls) in enumerate(asks)]
    chats.append({"messages": [{"role": "user", "content": "Weather in Paris?"},
                               {"role": "assistant", "content": "", "tool_calls": [
                                   {"id": "call_9", "type": "function",
                                    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 1}'}}]},
                               {"role": "tool", "tool_call_id": "call_9", "content": "sunny"},
                               {"role": "assistant", "content": "It is sunny in Paris."}],
                  "tools": [WEATHER, TIME], "parallel_tool_calls": False})
    return chats


def test_tool_examples_show_the_tools_and_are_scored_on_their_calls(tiny_model_dir, tmp_path, monkeypatch):
    seen: dict[str, list[list[int]]] = {}
    generate = run.generate_replies

    def recording(model, tokenizer, prompts, *args, **kwargs):
        seen[args[2]] = prompts  # label: the candidate's name
        return generate(model, tokenizer, prompts, *args, **kwargs)

    monkeypatch.setattr(run, "generate_replies", recording)
    data = write_jsonl(tmp_path / "tools.jsonl", tool_chats())
    report = evaluate(base=str(tiny_model_dir), data=data, out=tmp_path / "out", max_new_tokens=80,
                      candidates=[{"name": "served"}, {"name": "free", "constrain_tool_calls": False},
                                  {"name": "must-call", "tool_choice": "required"}],
                      verdict={"baseline": "served"}, metrics={"readability": False}, show_progress=False)

    tokenizer = load_tokenizer(str(tiny_model_dir))
    for name in ("served", "free", "must-call"):
        for ids in seen[name]:
            prompt = tokenizer.decode(ids)
            assert "<tools>" in prompt and json.dumps(WEATHER) in prompt and json.dumps(TIME) in prompt
    last = tokenizer.decode(seen["served"][4])
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 1}}\n</tool_call>' in last
    assert "<tool_response>\nsunny\n</tool_response>" in last  # the earlier call and its result, as trained

    examples = report["examples"]
    assert examples[0]["reference"] == call("get_weather", {"city": "Paris", "days": 3})
    assert examples[4]["reference"] == "It is sunny in Paris."
    assert examples[0]["prompt"] == [{"role": "user", "content": "Weather in Paris for 3 days?"}]
    assert examples[4]["prompt"][1]["tool_calls"][0]["function"]["name"] == "get_weather"
    for example, chat in zip(examples, tool_chats(), strict=True):  # the file's calls are what replies are scored on
        expected = [(c["function"]["name"], json.loads(c["function"]["arguments"]))
                    for c in chat["messages"][-1].get("tool_calls", [])]
        for name in ("served", "free"):
            text, scores = example["outputs"][name]["text"], example["outputs"][name]["scores"]
            found = tool_call_scores(text, expected)
            want = {key: None if value is None else 100 * value for key, value in found.items()}
            assert {key: scores[key] for key in want} == want
    assert examples[4]["outputs"]["free"]["scores"]["tool_name_accuracy"] is None  # no call expected
    for example in examples:  # calls under the grammar always parse and match the tool's parameters
        text = example["outputs"]["must-call"]["text"]
        body = json.loads(text.removeprefix("<tool_call>\n").removesuffix("\n</tool_call>"))
        jsonschema.validate(body["arguments"], {"get_weather": WEATHER, "get_time": TIME}[body["name"]]
                            ["function"]["parameters"])
    forced = report["aggregates"]["must-call"]
    assert forced["tool_call_parse_rate"] == 100.0 and forced["no_call_accuracy"] == 80.0  # 4 of 5 expect a call
    assert {c["name"]: c["kind"] for c in report["candidates"]}["must-call"] == "base+tool_choice required"
    for name in ("served", "free"):
        aggregates = report["aggregates"][name]
        assert aggregates["no_call_accuracy"] is not None and aggregates["tool_name_accuracy"] is not None
    assert report["verdict"]["primary_metric"] == "tool_arguments_exact"
    assert set(report["comparisons"]["free"]["no_call_accuracy"]) >= {"delta", "ci_low", "ci_high"}
    html = (tmp_path / "out" / "report.html").read_text()
    assert "calls a tool when it should %" in html and "right tools called %" in html


# --- endpoints: the candidate's request, the judge's verdict format ---------------------------------------------

BODIES: list[dict] = []  # every request the fake server received, as sent
app = FastAPI()


def _judge_answer(body: dict) -> str:
    if body["model"] == "tool-api":
        return '{"status": "open", "id": 0}'
    question = body["messages"][1]["content"]
    return json.dumps({"score": 4, "reason": "fine"} if "<reply>" in question else {"winner": "tie", "reason": "same"})


@app.post("/v1/chat/completions")
async def chat_completions(request: Request):
    body = await request.json()
    BODIES.append(body)
    if body["model"] == "no-structured-outputs" and "response_format" in body:
        return JSONResponse(status_code=400, content={"error": {
            "message": "response_format is not supported", "type": "invalid_request_error",
            "param": "response_format", "code": None}})
    message = {"role": "assistant", "content": None if body.get("tools") else _judge_answer(body)}
    if body.get("tools"):
        message["tool_calls"] = [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"days": 3, "city": "Paris"}'}}]
    return {"id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


@pytest.fixture(scope="module")
def server_url():
    with serve_app(app) as url:
        yield url


@pytest.fixture
def url(server_url, monkeypatch) -> str:
    BODIES.clear()
    monkeypatch.setattr(judge, "RETRY_PAUSE_S", 0.0)
    return server_url


ITEMS = [JudgeItem([{"role": "user", "content": f"question {i}"}], "answer", {"base": "a", "tuned": "b"})
         for i in range(3)]


def test_judge_asks_for_its_verdict_with_a_json_schema(url):
    result = judge_candidates(JudgeConfig(url=url, model="structured"), ITEMS, ["base", "tuned"], "base",
                              show_progress=False)
    assert result["status"] == "ok" and result["rubric"]["tuned"]["scores"] == [4, 4, 4]
    assert len(BODIES) == 6 + 6 and all("response_format" in body for body in BODIES)
    formats = {body["response_format"]["json_schema"]["name"]: body["response_format"] for body in BODIES}
    rubric = formats["rubric_verdict"]["json_schema"]["schema"]
    pairwise = formats["pairwise_verdict"]["json_schema"]["schema"]
    jsonschema.validate({"score": 4, "reason": "fine"}, rubric)
    assert not jsonschema.Draft202012Validator(rubric).is_valid({"score": 6, "reason": "too high"})
    assert not jsonschema.Draft202012Validator(pairwise).is_valid({"winner": "C", "reason": "no such reply"})


def test_judge_falls_back_to_the_plain_prompt_once_the_endpoint_refuses_response_format(url):
    result = judge_candidates(JudgeConfig(url=url, model="no-structured-outputs"), ITEMS, ["base", "tuned"], "base",
                              show_progress=False)
    assert result["status"] == "ok" and result["failures"] == 0
    assert result["rubric"]["base"]["scores"] == [4, 4, 4] and result["pairwise"]["tuned"]["ties"] == 3
    assert sum("response_format" in body for body in BODIES) == 1  # asked once, remembered for the rest of the run
    assert len(BODIES) == 12 + 1

    BODIES.clear()
    client = make_client(url, None, 10)
    config = JudgeConfig(url=url, model="no-structured-outputs")
    assert rate_reply(client, config, ITEMS[0].prompt, "a") == (4, None)
    assert rate_reply(client, config, ITEMS[1].prompt, "b") == (4, None)
    assert ["response_format" in body for body in BODIES] == [True, False, False]


def test_endpoint_candidate_gets_the_tools_and_response_format_and_its_calls_are_scored(tiny_model_dir, url,
                                                                                          tmp_path):
    data = write_jsonl(tmp_path / "tools.jsonl", tool_chats()[:1] + order_chats(1))
    report = evaluate(base=str(tiny_model_dir), data=data, out=tmp_path / "out", max_new_tokens=32,
                      candidates=[{"name": "api", "endpoint": {"url": url, "model": "tool-api"},
                                   "response_format": SCHEMA_FORMAT, "tool_choice": "required"}],
                      show_progress=False)

    with_tools, without = BODIES
    assert with_tools["tools"] == [WEATHER, TIME] and with_tools["tool_choice"] == "required"
    assert with_tools["parallel_tool_calls"] is False and with_tools["response_format"] == SCHEMA_FORMAT
    assert "tools" not in without and without["response_format"] == SCHEMA_FORMAT
    first, second = (example["outputs"]["api"] for example in report["examples"])
    assert first["text"] == call("get_weather", {"days": 3, "city": "Paris"})
    assert first["scores"]["tool_arguments_exact"] == 100.0 and first["scores"]["tool_call_parse_rate"] == 100.0
    assert second["scores"]["json_schema"] == 100.0 and second["scores"]["tool_name_accuracy"] is None


def test_schema_the_decoding_cannot_enforce_is_refused_before_generating(tiny_model_dir, tmp_path):
    unique = {"type": "json_schema", "json_schema": {"name": "tags", "schema": {"type": "array", "uniqueItems": True}}}
    data = write_jsonl(tmp_path / "test.jsonl", order_chats(2))
    with pytest.raises(HoneError, match=r"candidate 'tags': response_format: .*uniqueItems"):
        evaluate(base=str(tiny_model_dir), data=data, out=tmp_path / "out",
                 candidates=[{"name": "tags", "response_format": unique}], show_progress=False)
