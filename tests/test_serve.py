"""`hone serve` over real sockets with the official OpenAI SDK: adapters, batching, streaming, protection."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch
import yaml
from conftest import serve_app

from hone.api.app import create_app
from hone.errors import HoneError
from hone.serve.config import ServeConfig, load_serve_config

CHAT = [{"role": "user", "content": "hello world, the quick brown fox"}]
PROMPTS = ["the quick brown fox", "hello world", "refund order user assistant", "lazy dog jumps over the",
           '{"name": "value"}', "system hello"]


def make_adapter(run_dir: Path, base: str, seed: int, model_dir: Path | None = None) -> Path:
    """A hone-style run directory whose LoRA B is random (non-zero), so the adapter changes the output."""
    from peft import LoraConfig, get_peft_model

    from hone.models import load_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(load_model(str(model_dir or base)),
                                LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for name, parameter in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.5)
    peft_model.save_pretrained(run_dir / "adapter")
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"base_model": base}))
    return run_dir


@pytest.fixture(scope="module", autouse=True)
def restore_threads():
    """The servers here run the tiny model on one thread (`threads: 1`); later tests get the default back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {name: make_adapter(root / name, str(tiny_model_dir), seed)
            for seed, name in enumerate(["legal", "support", "spare"], start=1)}


def config(tiny_model_dir, adapters, tmp_path, **settings) -> ServeConfig:
    raw = {"base": str(tiny_model_dir), "base_id": "tiny", "dtype": "fp32", "threads": 1,
           "database": f"sqlite:///{tmp_path / 'hone.db'}",
           "adapters": {name: adapters[name] for name in ("legal", "support") if name in adapters}, **settings}
    return ServeConfig.model_validate(raw)


@pytest.fixture(scope="module")
def server(tiny_model_dir, adapters, tmp_path_factory):
    app = create_app(config(tiny_model_dir, adapters, tmp_path_factory.mktemp("db"), max_batch=8))
    with serve_app(app) as url:
        yield url


def client(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0)


def greedy(url: str, model: str, messages=CHAT, max_tokens: int = 12, key: str = "unused") -> str:
    reply = client(url, key).chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                temperature=0, extra_body={"ignore_eos": True})
    return reply.choices[0].message.content


def health(url: str) -> dict:
    return httpx.get(url.removesuffix("/v1") + "/health").json()


def test_models_lists_the_base_and_each_adapter_with_its_parent(server):
    models = {m.id: m.model_dump() for m in client(server).models.list().data}
    assert set(models) == {"tiny", "legal", "support"}
    assert models["tiny"]["parent"] is None
    assert models["legal"]["parent"] == "tiny" and models["support"]["parent"] == "tiny"
    assert {name: model["root"] for name, model in models.items()} == {name: name for name in models}


def test_plain_and_streamed_replies_agree_with_usage(server):
    sdk = client(server)
    plain = sdk.chat.completions.create(model="legal", messages=CHAT, max_tokens=10, temperature=0,
                                        extra_body={"ignore_eos": True})
    assert plain.object == "chat.completion" and plain.choices[0].finish_reason == "length"
    assert plain.usage.completion_tokens == 10 and plain.usage.prompt_tokens > 0
    chunks = list(sdk.chat.completions.create(model="legal", messages=CHAT, max_tokens=10, temperature=0,
                                              stream=True, stream_options={"include_usage": True},
                                              extra_body={"ignore_eos": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    text = sdk.completions.create(model="support", prompt="the quick brown", max_tokens=6, temperature=0)
    assert text.object == "text_completion" and text.usage.prompt_tokens > 0


def test_sse_ends_with_done(server):
    body = {"model": "tiny", "messages": CHAT, "max_tokens": 3, "stream": True}
    with httpx.stream("POST", server + "/chat/completions", json=body) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[0].removeprefix("data: "))["object"] == "chat.completion.chunk"


def test_switching_adapters_changes_the_output(server):
    replies = {model: greedy(server, model) for model in ["tiny", "legal", "support"]}
    assert len(set(replies.values())) == 3


def test_concurrent_mixed_adapter_requests_match_sequential_ones(server):
    jobs = [(model, prompt, tokens) for model, prompt, tokens in
            zip(["tiny", "legal", "support"] * 2, PROMPTS, [20, 5, 30, 12, 25, 8], strict=True)]
    sequential = [greedy(server, m, [{"role": "user", "content": p}], n) for m, p, n in jobs]
    assert health(server)["adapter_merged"] in {"legal", "support"}  # lone adapter replies ran merged

    async def together() -> list[str]:
        sdk = openai.AsyncOpenAI(base_url=server, api_key="unused", max_retries=0)
        replies = await asyncio.gather(*[
            sdk.chat.completions.create(model=m, messages=[{"role": "user", "content": p}], max_tokens=n,
                                        temperature=0, extra_body={"ignore_eos": True}) for m, p, n in jobs])
        return [reply.choices[0].message.content for reply in replies]

    steps_before = health(server)["steps"]
    assert asyncio.run(together()) == sequential
    assert health(server)["steps"] - steps_before < sum(n for _, _, n in jobs)  # forward passes were shared


def test_a_short_request_does_not_wait_for_a_long_one(server):
    body = {"model": "legal", "messages": CHAT, "max_tokens": 400, "stream": True, "ignore_eos": True,
            "temperature": 0}
    with httpx.stream("POST", server + "/chat/completions", json=body, timeout=60) as long:
        lines = long.iter_lines()
        next(lines)
        short = client(server).chat.completions.create(model="support", messages=CHAT, max_tokens=3)
        assert short.choices[0].finish_reason in {"length", "stop"}
        assert health(server)["running"] == 1  # the long one is still going


def test_sampling_with_a_seed_repeats_and_stop_strings_cut(server):
    sdk = client(server)
    sampled = [sdk.completions.create(model="legal", prompt="the quick", max_tokens=12, temperature=1.0,
                                      top_p=0.9, seed=7).choices[0].text for _ in range(2)]
    assert sampled[0] == sampled[1]
    full = greedy(server, "legal", max_tokens=12)
    stop = full.strip()[2:4] or full[:1]
    cut = sdk.chat.completions.create(model="legal", messages=CHAT, max_tokens=12, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert stop not in cut.choices[0].message.content and full.startswith(cut.choices[0].message.content)


def test_unknown_model_and_bad_parameters_get_openai_errors(server):
    sdk = client(server)
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.chat.completions.create(model="nope", messages=CHAT)
    assert missing.value.body["code"] == "model_not_found" and missing.value.body["param"] == "model"
    for params, param in [({"n": 9}, "n"), ({"temperature": 3}, "temperature"), ({"max_tokens": 10**6}, "max_tokens"),
                          ({"stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"top_p": 0}, "top_p")]:
        with pytest.raises(openai.BadRequestError) as bad:
            sdk.chat.completions.create(model="tiny", messages=CHAT, **params)
        assert bad.value.body["param"] == param and bad.value.body["type"] == "invalid_request_error"
    response = httpx.post(server + "/chat/completions", json={"model": "tiny", "messages": CHAT, "tempreature": 1})
    assert response.status_code == 400 and response.json()["error"]["param"] == "tempreature"
    response = httpx.post(server + "/chat/completions", content=b"{not json",
                          headers={"content-type": "application/json"})
    assert response.status_code == 400 and "JSON" in response.json()["error"]["message"]


def test_adapters_load_and_unload_at_run_time(adapters, tmp_path, tiny_model_dir):
    other_base = adapters["spare"].parent / "other"  # under the server's adapter_roots
    other_base.mkdir()
    (other_base / "config.yaml").write_text(yaml.safe_dump({"base_model": "smollm2-135m-instruct"}))
    (other_base / "adapter").mkdir()
    for file in ["adapter_config.json", "adapter_model.safetensors"]:
        (other_base / "adapter" / file).write_bytes((adapters["spare"] / "adapter" / file).read_bytes())
    settings = config(tiny_model_dir, adapters, tmp_path, adapter_roots=[adapters["spare"].parent])
    admin = {"Authorization": "Bearer sk-operator"}  # loading reads the server's disk: the operator's key
    with serve_app(create_app(settings, api_keys=["sk-operator"])) as server:
        load = server + "/load_lora_adapter"
        spare = {"lora_name": "spare", "lora_path": str(adapters["spare"])}
        assert httpx.post(load, json=spare, headers=admin).status_code == 200
        assert "spare" in {m.id for m in client(server, "sk-operator").models.list().data}
        assert greedy(server, "spare", key="sk-operator") != greedy(server, "tiny", key="sk-operator")
        again = httpx.post(load, json=spare, headers=admin)
        assert again.status_code == 400 and "already been loaded" in again.json()["error"]["message"]
        missing = httpx.post(load, json={"lora_name": "x", "lora_path": str(tmp_path / "nowhere")}, headers=admin)
        assert missing.status_code == 400 and missing.json()["error"]["param"] == "lora_path"
        wrong = httpx.post(load, json={"lora_name": "x", "lora_path": str(other_base)}, headers=admin)
        assert wrong.status_code == 400 and "trained on another base model; this server serves 'tiny'" in wrong.text

        unload = server + "/unload_lora_adapter"
        assert httpx.post(unload, json={"lora_name": "spare"}, headers=admin).status_code == 200
        with pytest.raises(openai.NotFoundError):
            client(server, "sk-operator").chat.completions.create(model="spare", messages=CHAT)
        assert "spare" not in health(server)["adapters_loaded"]
        assert httpx.post(unload, json={"lora_name": "spare"}, headers=admin).status_code == 404


def test_a_client_that_disconnects_mid_stream_frees_its_slot(server):
    body = {"model": "support", "messages": CHAT, "max_tokens": 450, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", server + "/chat/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        for _ in range(3):
            next(lines)
        assert health(server)["running"] == 1
    deadline = time.monotonic() + 10
    while (state := health(server))["running"] or state["in_flight"]:
        assert time.monotonic() < deadline, state
        time.sleep(0.05)


def test_api_keys_are_required_once_configured(tiny_model_dir, adapters, tmp_path):
    from hone.api.keys import KeyStore

    settings = config(tiny_model_dir, adapters, tmp_path)
    stored = KeyStore(settings.database).create("ci")
    with serve_app(create_app(settings, api_keys=["sk-cli-key"])) as url:
        for key in ["sk-cli-key", stored]:
            assert client(url, key).models.list().data
        with pytest.raises(openai.AuthenticationError) as wrong:
            client(url, "sk-wrong").chat.completions.create(model="tiny", messages=CHAT, max_tokens=2)
        assert wrong.value.status_code == 401 and wrong.value.body["code"] == "invalid_api_key"
        assert httpx.get(url + "/models").json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(url.removesuffix("/v1") + "/health").status_code == 200


def test_limits_on_size_concurrency_and_time(tiny_model_dir, adapters, tmp_path):
    limits = {"max_request_bytes": 2048, "max_concurrent_requests": 1, "request_timeout_s": 30}
    with serve_app(create_app(config(tiny_model_dir, adapters, tmp_path, limits=limits))) as url:
        big = httpx.post(url + "/chat/completions", json={"model": "tiny", "messages": [
            {"role": "user", "content": "x" * 5000}]})
        assert big.status_code == 413 and "limits.max_request_bytes" in big.json()["error"]["message"]
        body = {"model": "tiny", "messages": CHAT, "max_tokens": 450, "stream": True, "ignore_eos": True}
        with httpx.stream("POST", url + "/chat/completions", json=body, timeout=60) as running:
            lines = running.iter_lines()
            first = [next(lines), next(lines), next(lines)]
            busy = httpx.post(url + "/chat/completions", json={"model": "tiny", "messages": CHAT})
            assert busy.status_code == 429 and busy.headers["retry-after"] == "1", (first, health(url))
    with serve_app(create_app(config(tiny_model_dir, adapters, tmp_path, limits={"request_timeout_s": 0.01}))) as url:
        slow = httpx.post(url + "/chat/completions", json={"model": "tiny", "messages": CHAT, "max_tokens": 450,
                                                          "ignore_eos": True})
        assert slow.status_code == 504 and slow.json()["error"]["code"] == "timeout"
        deadline = time.monotonic() + 10
        while health(url)["running"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_lru_keeps_at_most_max_adapters_and_answers_the_same(server, tiny_model_dir, adapters, tmp_path):
    expected = {model: greedy(server, model) for model in ["legal", "support"]}
    with serve_app(create_app(config(tiny_model_dir, adapters, tmp_path, max_adapters=1))) as url:
        for model in ["legal", "support", "legal"]:
            assert greedy(url, model) == expected[model]
            assert health(url)["adapters_loaded"] == [model]


def test_captured_responses_take_feedback(tiny_model_dir, adapters, tmp_path):
    settings = config(tiny_model_dir, adapters, tmp_path, models={"legal": {"capture": True}})
    with serve_app(create_app(settings)) as url:
        reply = client(url).chat.completions.create(model="legal", messages=CHAT, max_tokens=4)
        feedback = httpx.post(url + "/feedback", json={"response_id": reply.id, "rating": 1,
                                                       "correction": "a better answer"})
        assert feedback.status_code == 200
        unknown = httpx.post(url + "/feedback", json={"response_id": "chatcmpl-nope", "rating": 1})
        assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "response_id"


def test_config_problems_name_the_key(tiny_model_dir, adapters, tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump({"base": str(tiny_model_dir), "max_adapter": 2}))
    with pytest.raises(HoneError, match="max_adapter: unknown key; did you mean 'max_adapters'"):
        load_serve_config(path)
    path.write_text(yaml.safe_dump({"base": str(tiny_model_dir), "adapters": {"legal": "runs/legal"},
                                    "models": {"legl": {"capture": True}}}))
    with pytest.raises(HoneError, match="models: legl is neither the base"):
        load_serve_config(path)
    mismatched = tmp_path / "mismatched"
    mismatched.mkdir()
    (mismatched / "config.yaml").write_text(yaml.safe_dump({"base_model": "some-other-model"}))
    (mismatched / "adapter").symlink_to(adapters["legal"] / "adapter")
    with pytest.raises(HoneError, match="adapters.legal: adapter 'legal' was trained on base model 'some-other"):
        create_app(config(tiny_model_dir, {"legal": mismatched, "support": adapters["support"]}, tmp_path))


@pytest.mark.real_model
def test_real_model_serves_adapters_batched_through_the_sdk(tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("HONE_HOME", os.environ.get("HONE_E2E_HOME", str(Path.home() / ".cache" / "hone")))
    model = "smollm2-135m-instruct"
    run = make_adapter(tmp_path / "support", model, seed=3)
    settings = ServeConfig(base=model, adapters={"support": run}, dtype="fp32",
                           database=f"sqlite:///{tmp_path / 'hone.db'}")
    question = [{"role": "user", "content": "What is the capital of France?"}]
    with serve_app(create_app(settings)) as url:
        sdk = client(url)
        base = greedy(url, model, question, max_tokens=8)
        assert "Paris" in base
        streamed = sdk.chat.completions.create(model="support", messages=question, max_tokens=8, temperature=0,
                                               stream=True, extra_body={"ignore_eos": True})
        adapted = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
        assert adapted != base and adapted == greedy(url, "support", question, max_tokens=8)

        async def together() -> list[str]:
            sdk_async = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0)
            replies = await asyncio.gather(*[
                sdk_async.chat.completions.create(model=name, messages=question, max_tokens=8, temperature=0,
                                                  extra_body={"ignore_eos": True}) for name in [model, "support"]])
            return [reply.choices[0].message.content for reply in replies]

        assert asyncio.run(together()) == [base, adapted]


def test_retrieved_passages_are_injected_and_returned_as_sources(tiny_model_dir, adapters, tmp_path):
    from hone.retrieval.store import build_index

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "refunds.md").write_text("Refunds are paid within 14 days of the return arriving.\n")
    (docs / "shipping.md").write_text("Parcels ship from Rotterdam every weekday.\n")
    build_index(docs, tmp_path / "docs.index", show_progress=False)
    settings = config(tiny_model_dir, adapters, tmp_path, indexes={"policies": tmp_path / "docs.index"})
    question = [{"role": "user", "content": "How fast are refunds paid?"}]
    with serve_app(create_app(settings)) as url:
        plain = client(url).chat.completions.create(model="legal", messages=question, max_tokens=2)
        grounded = client(url).chat.completions.create(model="legal", messages=question, max_tokens=2,
                                                       extra_body={"index": "policies", "top_k": 1})
        assert grounded.model_extra["sources"][0]["source"] == "refunds.md"
        assert grounded.usage.prompt_tokens > plain.usage.prompt_tokens + 10  # the passage is in the prompt
        with pytest.raises(openai.BadRequestError) as unknown:
            client(url).chat.completions.create(model="legal", messages=question, extra_body={"index": "/etc"})
        assert unknown.value.body["param"] == "index"
        stream = client(url).chat.completions.create(model="legal", messages=question, max_tokens=2, stream=True,
                                                     extra_body={"index": "policies", "top_k": 1})
        assert [c.model_extra.get("sources") for c in stream][-1][0]["source"] == "refunds.md"


def test_adapters_are_matched_to_the_base_by_weights_not_by_name(tiny_model_dir, adapters, tmp_path):
    import json
    import shutil

    from hone.models import fingerprint

    copy = shutil.copytree(tiny_model_dir, tmp_path / "renamed-copy-of-the-base")
    moved = shutil.copytree(adapters["legal"], tmp_path / "legal-moved")
    (moved / "config.yaml").write_text(yaml.safe_dump({"base_model": "/gone/old/path/to/the/base"}))
    (moved / "summary.json").write_text(json.dumps({"base_model_fingerprint": fingerprint(str(tiny_model_dir))}))
    settings = config(copy, {"legal": moved}, tmp_path)
    assert "legal" in [model.id for model in create_app(settings).state.server.served_models()]

    (moved / "config.yaml").write_text(yaml.safe_dump({"base_model": str(tiny_model_dir)}))  # same name...
    (moved / "summary.json").write_text(json.dumps({"base_model_fingerprint": "0" * 64}))  # ...other weights
    with pytest.raises(HoneError, match="weights fingerprint 000000000000"):
        create_app(config(tiny_model_dir, {"legal": moved}, tmp_path))
