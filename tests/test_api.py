"""The HTTP application itself: every route typed in /openapi.json, the exact streaming shapes, the caller
routes are given, and lifespan hooks."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from conftest import serve_app
from fastapi import APIRouter

from hone.api.app import OPEN_ROUTERS, V1_ROUTERS, add_lifespan_hook, create_app
from hone.api.auth import Caller, CurrentCaller, KeyAuth
from hone.api.errors import APIError
from hone.api.keys import KeyStore
from hone.api.protocol import ChatCompletionChunk, CompletionChunk
from hone.serve.config import ServeConfig

CHAT = [{"role": "user", "content": "hello world, the quick brown fox"}]


def settings(tiny_model_dir, tmp_path) -> ServeConfig:
    return ServeConfig(base=str(tiny_model_dir), base_id="tiny", dtype="fp32", threads=1,
                       database=f"sqlite:///{tmp_path / 'hone.db'}")


def _resolve(schema: dict, components: dict) -> dict:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    name = ref.removeprefix("#/components/schemas/")
    assert name in components, f"{ref} points at no component"
    return components[name]


def _assert_typed(name: str, schema: dict, components: dict) -> None:
    """An object schema names its properties (and every nested object does): no untyped `{}` or bare object."""
    schema = _resolve(schema, components)
    assert schema, f"{name}: untyped (empty) schema"
    if schema.get("x-json-schema"):
        return  # the value is itself a JSON Schema, of any shape by design
    for option in schema.get("anyOf", []) + schema.get("oneOf", []):
        _assert_typed(name, option, components)
    values = schema.get("additionalProperties")
    if isinstance(values, dict) and values and not schema.get("properties"):  # a map of typed values
        _assert_typed(f"{name}[key]", values, components)
    elif schema.get("type") == "object" or "properties" in schema:
        assert schema.get("properties"), f"{name}: an object without properties"
        for field, sub in schema["properties"].items():
            _assert_typed(f"{name}.{field}", sub, components)
    if schema.get("type") == "array":
        _assert_typed(f"{name}[]", schema["items"], components)


def test_openapi_types_every_request_and_response(tiny_model_dir, tmp_path):
    app = create_app(settings(tiny_model_dir, tmp_path))
    routes = [(prefix + route.path, method.lower()) for routers, prefix in [(V1_ROUTERS, "/v1"), (OPEN_ROUTERS, "")]
              for router in routers for route in router.routes for method in route.methods]
    with serve_app(app) as url:
        schema = httpx.get(url.removesuffix("/v1") + "/openapi.json").json()
    components = schema["components"]["schemas"]
    listed = [(path, method) for path, operations in schema["paths"].items() for method in operations]
    assert sorted(listed) == sorted(routes)
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/load_lora_adapter",
            "/v1/unload_lora_adapter", "/v1/feedback", "/health"} <= {path for path, _ in routes}
    for path, method in routes:
        operation = schema["paths"][path][method]
        where = f"{method.upper()} {path}"
        if method == "post" and "requestBody" in operation:
            sent = operation["requestBody"]["content"]
            body = sent.get("application/json", sent.get("multipart/form-data", {})).get("schema", {})
            assert "$ref" in body, where
            _assert_typed(f"{where} request", body, components)
        elif method == "post":  # only actions on an object named in the path take no body
            assert path.endswith(("/cancel", "/pause", "/resume")), where
        success = operation["responses"]["200"]["content"]
        for media_type, content in success.items():
            if media_type == "text/plain":
                assert content["schema"] == {"type": "string"}, where
            elif path.endswith("/content"):
                assert content["schema"] == {"type": "string", "format": "binary"}, where
            else:
                assert "$ref" in content["schema"], f"{where} {media_type}"
                _assert_typed(f"{where} {media_type}", content["schema"], components)
        assert "422" not in operation["responses"], f"{where}: validation errors are answered as 400"
        for status, response in operation["responses"].items():
            if status != "200":
                assert response["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ErrorResponse"}, f"{where} {status}"
    assert "text/event-stream" in schema["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert "401" in schema["paths"]["/v1/models"]["get"]["responses"]
    assert "401" not in schema["paths"]["/health"]["get"]["responses"]


def _events(url: str, body: dict) -> list[dict]:
    with httpx.stream("POST", url + "/chat/completions" if "messages" in body else url + "/completions",
                      json=body) as response:
        lines = [line.removeprefix("data: ") for line in response.iter_lines() if line]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_stream_chunks_have_openais_keys_and_match_their_documented_models(tiny_model_dir, tmp_path):
    with serve_app(create_app(settings(tiny_model_dir, tmp_path))) as url:
        plain = httpx.post(url + "/chat/completions", json={"model": "tiny", "messages": CHAT, "max_tokens": 3}).json()
        chat = _events(url, {"model": "tiny", "messages": CHAT, "max_tokens": 3, "stream": True,
                             "ignore_eos": True})
        counted = _events(url, {"model": "tiny", "messages": CHAT, "max_tokens": 3, "stream": True,
                                "ignore_eos": True, "stream_options": {"include_usage": True}})
        text = _events(url, {"model": "tiny", "prompt": "the quick", "max_tokens": 3, "stream": True,
                             "ignore_eos": True})
    assert list(plain) == ["id", "object", "created", "model", "system_fingerprint", "choices", "usage"]
    assert list(plain["choices"][0]) == ["index", "message", "logprobs", "finish_reason"]
    assert all(list(chunk) == ["id", "object", "created", "model", "system_fingerprint", "choices"]
               for chunk in chat + text)
    assert chat[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(set(chunk["choices"][0]["delta"]) == {"content"} for chunk in chat[1:-1])
    assert chat[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    assert all(chunk["usage"] is None for chunk in counted[:-1])
    assert counted[-1]["choices"] == [] and counted[-1]["usage"]["completion_tokens"] == 3
    assert list(text[0]["choices"][0]) == ["index", "text", "logprobs", "finish_reason"]
    for chunk in chat + counted:
        ChatCompletionChunk.model_validate(chunk)
    for chunk in text:
        CompletionChunk.model_validate(chunk)


def test_the_caller_is_the_keys_name_project_and_role(tmp_path):
    database = f"sqlite:///{tmp_path / 'hone.db'}"
    # No key exists: the server is open, to developers (nothing that touches its disk).
    assert KeyAuth(database).caller("") == Caller("default", None, "developer")
    stored = KeyStore(database).create("support-app")
    legal = KeyStore(database).create("legal-review", project="legal", role="approver")
    auth = KeyAuth(database, api_keys=["sk-cli"])
    assert auth.caller(f"Bearer {stored}") == Caller("default", "support-app", "developer")
    assert auth.caller(f"Bearer {legal}") == Caller("legal", "legal-review", "approver")
    assert auth.caller("Bearer sk-cli") == Caller("default", None, "admin")  # the operator's own key
    for header in ["", f"Basic {stored}", "Bearer ", "Bearer sk-wrong"]:
        with pytest.raises(APIError) as refused:
            auth.caller(header)
        assert refused.value.status == 401 and refused.value.code == "invalid_api_key"


def test_a_router_gets_the_caller_and_lifespan_hooks_run_in_order(tiny_model_dir, tmp_path):
    config = settings(tiny_model_dir, tmp_path)
    stored = KeyStore(config.database).create("ci")
    app = create_app(config)
    whoami = APIRouter()

    @whoami.get("/v1/whoami")
    async def who(caller: CurrentCaller) -> dict[str, str | None]:
        return {"project": caller.project, "key_name": caller.key_name}

    app.include_router(whoami)
    calls = []
    add_lifespan_hook(app, "first", lambda: calls.append("start first"), lambda: calls.append("stop first"))

    async def start_second() -> None:
        calls.append("start second")

    add_lifespan_hook(app, "second", start_second, lambda: calls.append("stop second"))
    with serve_app(app) as url:
        assert calls == ["start first", "start second"]
        assert httpx.get(url + "/whoami", headers={"Authorization": f"Bearer {stored}"}).json() == {
            "project": "default", "key_name": "ci"}
        assert httpx.get(url + "/whoami").status_code == 401
        assert openai.OpenAI(base_url=url, api_key=stored, max_retries=0).models.list().data[0].id == "tiny"
    assert calls == ["start first", "start second", "stop second", "stop first"]
