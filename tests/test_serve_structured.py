"""Tools, structured outputs, logprobs and n > 1 in `hone serve`, through the official OpenAI SDK over real sockets.

The tiny random model writes whatever its grammar allows, so every reply that parses here parses because of the
constraint, never by luck.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import openai
import pytest
from conftest import build_tiny_model, serve_app
from test_serve import client, config, make_adapter, restore_threads  # noqa: F401  (its autouse fixture)

from hone.api.app import create_app

PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 12},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "plan": {"enum": ["free", "pro", "team"]},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3}},
    "required": ["name", "age", "plan", "tags"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string", "maxLength": 10},
                                                "unit": {"enum": ["c", "f"]}},
                                                "required": ["city", "unit"], "additionalProperties": False}}}
REFUND = {"type": "function", "function": {"name": "refund", "parameters": {
    "type": "object", "properties": {"order": {"type": "integer", "minimum": 1, "maximum": 9999}},
    "required": ["order"], "additionalProperties": False}}}
TOOLS = [WEATHER, REFUND]
SCHEMAS = {"get_weather": WEATHER["function"]["parameters"], "refund": REFUND["function"]["parameters"]}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model_dir = build_tiny_model(tmp_path_factory.mktemp("tiny-2k"), context=2048)  # room for a tool list
    root = tmp_path_factory.mktemp("adapters")
    adapters = {"legal": make_adapter(root / "legal", str(model_dir), seed=1)}
    app = create_app(config(model_dir, adapters, tmp_path_factory.mktemp("db"), max_batch=8))
    with serve_app(app) as url:
        yield url


def person_format(schema: dict = PERSON) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}


def assert_calls_valid(calls) -> None:
    assert calls, "a call was required"
    for call in calls:
        assert call.type == "function" and call.id.startswith("call")
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_json_schema_replies_always_parse_and_match(server):
    sdk = client(server)
    for seed in range(6):
        reply = sdk.chat.completions.create(model="tiny", messages=ASK, max_tokens=200, temperature=1.0, seed=seed,
                                            response_format=person_format())
        choice = reply.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), PERSON)
        assert reply.usage.completion_tokens < 200
    unconstrained = [sdk.chat.completions.create(model="tiny", messages=ASK, max_tokens=40, temperature=1.0,
                                                 seed=seed).choices[0].message.content for seed in range(3)]
    assert not any(_parses(text) for text in unconstrained)  # the random model does not write JSON by itself


def _parses(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except json.JSONDecodeError:
        return False


def test_json_object_mode_and_the_sdk_parse_helper(server):
    from typing import Literal

    from pydantic import BaseModel, Field

    sdk = client(server)
    reply = sdk.chat.completions.create(model="tiny", messages=ASK, max_tokens=300, temperature=0.7, seed=3,
                                        response_format={"type": "json_object"})
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(reply.choices[0].message.content), dict)
    else:  # a random object may run long: cut by max_tokens it is still the start of one
        assert reply.choices[0].message.content.startswith("{")

    class Plan(BaseModel):
        plan: Literal["free", "pro", "team"]
        seats: int = Field(ge=1, le=500)

    parsed = sdk.chat.completions.parse(model="tiny", messages=ASK, max_tokens=200, temperature=0, response_format=Plan)
    plan = parsed.choices[0].message.parsed
    assert isinstance(plan, Plan) and isinstance(plan.seats, int)


def test_required_and_named_tool_calls_parse_and_match_their_schemas(server):
    sdk = client(server)
    for seed in range(4):
        reply = sdk.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, tool_choice="required",
                                            max_tokens=200, temperature=1.0, seed=seed)
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls" and not choice.message.content
        assert_calls_valid(choice.message.tool_calls)
    named = sdk.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, max_tokens=200, temperature=1.0,
                                        tool_choice={"type": "function", "function": {"name": "refund"}}, seed=1)
    calls = named.choices[0].message.tool_calls
    assert [call.function.name for call in calls] == ["refund"]
    assert_calls_valid(calls)
    single = sdk.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, tool_choice="required", seed=2,
                                         parallel_tool_calls=False, max_tokens=200, temperature=1.0)
    assert len(single.choices[0].message.tool_calls) == 1
    none = sdk.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=30,
                                       temperature=1.0, seed=4)
    assert none.choices[0].message.tool_calls is None and "<tool_call>" not in none.choices[0].message.content


def test_streamed_tool_calls_arrive_in_openai_delta_shape_and_match_the_whole_reply(server):
    sdk = client(server)
    settings = {"model": "tiny", "messages": ASK, "tools": TOOLS, "tool_choice": "required", "max_tokens": 200,
                "temperature": 1.0, "seed": 0}
    whole = sdk.chat.completions.create(**settings).choices[0]
    calls: dict[int, dict] = {}
    finish = None
    for chunk in sdk.chat.completions.create(**settings, stream=True):
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": delta.id, "name": "", "arguments": ""})
                call["name"] += delta.function.name or ""
                call["arguments"] += delta.function.arguments or ""
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == \
        [(c.function.name, json.loads(c.function.arguments)) for c in whole.message.tool_calls]
    assert all(c["id"].startswith("call") for c in calls.values())


def test_the_sdk_tool_loop_runs_to_an_answer(server):
    sdk = client(server)
    messages = list(ASK)
    first = sdk.chat.completions.create(model="tiny", messages=messages, tools=TOOLS, tool_choice="required",
                                        max_tokens=200, temperature=0).choices[0].message
    messages.append(first.model_dump(exclude_none=True))
    for call in first.tool_calls:
        messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21})})
    answer = sdk.chat.completions.create(model="tiny", messages=messages, tools=TOOLS, tool_choice="none",
                                         max_tokens=10, temperature=0).choices[0]
    assert answer.message.content and answer.message.tool_calls is None


def test_a_call_cut_by_max_tokens_comes_back_as_text_with_length(server):
    sdk = client(server)
    reply = sdk.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, tool_choice="required",
                                        max_tokens=6, temperature=0)
    choice = reply.choices[0]
    assert choice.finish_reason == "length" and choice.message.tool_calls is None
    assert choice.message.content.startswith("<tool")  # what was written of the call, nothing lost
    chunks = list(sdk.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, tool_choice="required",
                                              max_tokens=6, temperature=0, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_rows_with_their_own_grammar_and_adapter_match_each_alone(server):
    sdk = client(server)
    requests = [{"model": "tiny", "response_format": person_format()},
                {"model": "legal", "response_format": {"type": "json_object"}},
                {"model": "legal", "tools": TOOLS, "tool_choice": "required"},
                {"model": "tiny"},
                {"model": "legal", "response_format": person_format()}]

    def ask(settings: dict) -> str:
        reply = sdk.chat.completions.create(messages=ASK, max_tokens=60, temperature=0, **settings).choices[0]
        return reply.message.content or json.dumps([c.function.model_dump() for c in reply.message.tool_calls])

    alone = [ask(settings) for settings in requests]
    with ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(ask, requests))
    assert together == alone
    assert alone[0] != alone[4]  # the adapter changes what the same grammar gets


def test_logprobs_report_each_generated_token_and_its_alternatives(server):
    sdk = client(server)
    reply = sdk.chat.completions.create(model="tiny", messages=ASK, max_tokens=8, temperature=0, logprobs=True,
                                        top_logprobs=3, extra_body={"ignore_eos": True})
    choice = reply.choices[0]
    tokens = choice.logprobs.content
    assert len(tokens) == reply.usage.completion_tokens == 8
    assert b"".join(bytes(token.bytes) for token in tokens).decode() == choice.message.content
    for token in tokens:
        values = [top.logprob for top in token.top_logprobs]
        assert len(values) == 3 and values == sorted(values, reverse=True)
        assert token.logprob == pytest.approx(values[0], abs=1e-4)  # greedy picks the most likely token
    streamed = [lp for chunk in sdk.chat.completions.create(
        model="tiny", messages=ASK, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3, stream=True,
        extra_body={"ignore_eos": True}) for c in chunk.choices if c.logprobs for lp in c.logprobs.content]
    assert [(t.token, round(t.logprob, 4)) for t in streamed] == [(t.token, round(t.logprob, 4)) for t in tokens]


def test_n_choices_whole_and_streamed(server):
    sdk = client(server)
    reply = sdk.chat.completions.create(model="tiny", messages=ASK, max_tokens=8, temperature=1.0, seed=7, n=3,
                                        extra_body={"ignore_eos": True})
    assert [choice.index for choice in reply.choices] == [0, 1, 2]
    assert len({choice.message.content for choice in reply.choices}) > 1
    assert reply.usage.completion_tokens == 24
    again = sdk.chat.completions.create(model="tiny", messages=ASK, max_tokens=8, temperature=1.0, seed=7, n=3,
                                        extra_body={"ignore_eos": True})
    assert [c.message.content for c in again.choices] == [c.message.content for c in reply.choices]
    texts: dict[int, str] = {}
    finished = set()
    for chunk in sdk.chat.completions.create(model="tiny", messages=ASK, max_tokens=8, temperature=1.0, seed=7, n=3,
                                             stream=True, extra_body={"ignore_eos": True}):
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finished.add(choice.index)
    assert finished == {0, 1, 2}
    assert [texts[i] for i in range(3)] == [c.message.content for c in reply.choices]


@pytest.mark.parametrize(("settings", "param", "says"), [
    ({"response_format": person_format({"type": "object", "if": {"required": ["a"]}, "then": {}})},
     "response_format", "Unimplemented keys"),
    ({"response_format": person_format({"type": "array", "uniqueItems": True})}, "response_format", "uniqueItems"),
    ({"response_format": person_format({"type": "string", "format": "credit-card"})}, "response_format",
     "Unknown format"),
    ({"response_format": person_format({"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/b"},
                                                                       "b": {"$ref": "#/$defs/a"}}})},
     "response_format.json_schema.schema", "leads back to itself"),
    ({"response_format": person_format({"type": "integer", "minimum": 5, "maximum": 2})}, "response_format",
     "invalid"),
    ({"response_format": person_format({"$ref": "file:///etc/passwd"})}, "response_format",
     "does not fetch"),  # a $ref is never read from the server's disk or the network
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "delete_all"}}}, "body",
     "not in tools"),
    ({"tool_choice": "required"}, "body", "only allowed when tools"),
    ({"tools": [WEATHER, WEATHER]}, "body", "same name"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name", "pattern"),
    ({"logprobs": False, "top_logprobs": 2}, "body", "needs logprobs"),
    ({"top_logprobs": 21, "logprobs": True}, "top_logprobs", "20"),
    ({"response_format": {"type": "json_object"}, "extra_body": {"ignore_eos": True}}, "body", "ignore_eos"),
    ({"response_format": {"type": "xml"}}, "response_format", ""),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "call_x", "content": "1"}]},
     "body", "answers no call"),
    ({"messages": [{"role": "tool", "content": "1"}]}, "messages.0", "tool_call_id"),
])
def test_bad_tool_and_format_requests_get_a_400_naming_the_field(server, settings, param, says):
    sdk = client(server)
    settings = {"model": "tiny", "messages": ASK, "max_tokens": 5, **settings}
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(**settings)
    error = bad.value.body
    assert error["type"] == "invalid_request_error" and says in error["message"], error
    assert (error["param"] or "body").startswith(param), error
    assert "/" not in error["message"].replace("#/$defs/", "") or "Traceback" not in error["message"]


def test_the_server_keeps_serving_after_bad_grammars(server):
    sdk = client(server)
    for _ in range(3):
        with pytest.raises(openai.BadRequestError):
            sdk.chat.completions.create(model="tiny", messages=ASK, max_tokens=5,
                                        response_format=person_format({"not": {"type": "string"}}))
    reply = httpx.post(server + "/chat/completions", json={"model": "tiny", "messages": ASK, "max_tokens": 40,
                                                           "temperature": 0, "response_format": person_format()})
    assert reply.status_code == 200


def test_the_bundled_model_answers_tools_and_json_schema_that_always_parse(shared_model_cache, tmp_path):
    """The real model through the SDK: every JSON Schema reply and every tool call parses and matches its schema."""
    app = create_app(config(None, {}, tmp_path, base="smollm2-135m-instruct", base_id="smollm2", dtype="auto",
                            threads=None, max_batch=4))
    customer = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 30},
                                                 "city": {"type": "string", "maxLength": 30},
                                                 "plan": {"enum": ["free", "pro", "team"]}},
                "required": ["name", "city", "plan"], "additionalProperties": False}
    sentences = ["Ada Park lives in Lisbon and pays for the pro plan.", "Omar from Denver is on the free plan.",
                 "The team plan belongs to Lena Vogel in Osaka.", "Ravi Iyer, Leeds, pro plan."]
    with serve_app(app) as url:
        sdk = client(url)

        def extract(sentence: str) -> dict:
            reply = sdk.chat.completions.create(
                model="smollm2", max_tokens=80, temperature=0,
                messages=[{"role": "system", "content": "Extract the customer as JSON."},
                          {"role": "user", "content": sentence}],
                response_format={"type": "json_schema", "json_schema": {"name": "customer", "schema": customer}})
            assert reply.choices[0].finish_reason == "stop"
            return json.loads(reply.choices[0].message.content)

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(extract, sentences))
        for answer in answers:
            jsonschema.validate(answer, customer)
        assert answers[0]["city"] == "Lisbon"  # constrained, the small model still reads the sentence
        ask = [{"role": "user", "content": "What's the weather like in Paris today, in celsius?"}]
        whole = sdk.chat.completions.create(model="smollm2", messages=ask, tools=TOOLS, tool_choice="required",
                                            max_tokens=80, temperature=0).choices[0]
        assert whole.finish_reason == "tool_calls"
        assert_calls_valid(whole.message.tool_calls)
        streamed = {}
        for chunk in sdk.chat.completions.create(model="smollm2", messages=ask, tools=TOOLS, tool_choice="required",
                                                 max_tokens=80, temperature=0, stream=True):
            for delta in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
                streamed.setdefault(delta.index, [delta.function.name, ""])[1] += delta.function.arguments or ""
        assert [(name, json.loads(arguments)) for name, arguments in streamed.values()] == \
            [(call.function.name, json.loads(call.function.arguments)) for call in whole.message.tool_calls]


@pytest.mark.parametrize(("choice", "parallel", "allowed"), [
    ("auto", True, ["text then call", "call", "two calls", "text"]),
    ("required", True, ["call", "two calls"]),
    ("required", False, ["call"]),
    ({"type": "function", "function": {"name": "get_weather"}}, True, ["call"]),
    ("none", True, ["text"]),
])
def test_tool_choice_grammars_allow_exactly_their_replies(tiny_model_dir, choice, parallel, allowed):
    from hone.models import load_tokenizer
    from hone.models.constrained import Constraint, OutputGrammar, grammar_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    vocab = grammar_tokenizer(tokenizer, len(tokenizer), (tokenizer.eos_token_id,))
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>'
    replies = {"text then call": f"Let me check.\n{call}", "call": call, "two calls": f"{call}\n{call}",
               "text": "It is sunny."}
    grammar = OutputGrammar.tool_calls(TOOLS, choice, parallel)
    accepted = []
    for name, text in replies.items():
        constraint = Constraint(grammar, vocab)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if all(constraint.accept(token) for token in ids) and constraint.matcher.is_accepting():
            accepted.append(name)
    assert accepted == allowed
