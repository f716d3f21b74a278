"""Eval measures what is served: for the same conversation and documents, `hone eval` feeds the model the
same token ids as `hone serve`, stops on the same tokens, and so gives the same greedy reply.

The model is given a second stop token in its generation config (as Llama 3 and Qwen list several): one its
greedy reply produces, so a side that stopped only on the tokenizer's EOS would run on past it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import openai
import pytest
import torch
from conftest import serve_app, shared_home
from transformers import GenerationConfig
from transformers.generation.utils import GenerationMixin

from hone.api.app import create_app
from hone.data.render import render_prompt
from hone.eval import evaluate
from hone.eval.config import CandidateConfig
from hone.eval.prompting import EvalCase, PromptBuilder
from hone.models import frozen_dtype, load_model, load_tokenizer, local_model_dir
from hone.retrieval.store import build_index
from hone.serve.config import ServeConfig

QUESTION = [{"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "How fast are refunds paid?"}]
RAG_DOCS = CandidateConfig(name="rag-docs", rag={"k": 1, "source": "docs"})
MAX_TOKENS = 8


@pytest.fixture
def docs(tmp_path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "refunds.md").write_text("Refunds are paid within 14 days of the return arriving.\n")
    (folder / "shipping.md").write_text("Parcels ship from Rotterdam every weekday.\n")
    return folder


def greedy_reply(model_dir: Path, docs: Path) -> list[int]:
    """The model's greedy reply ids to QUESTION with its passage, in the dtype eval and serve load it in."""
    tokenizer = load_tokenizer(str(model_dir))
    [messages] = PromptBuilder(None, docs).build(RAG_DOCS, [EvalCase(QUESTION, "")])
    prompt = render_prompt(tokenizer, messages)
    model = load_model(str(model_dir), dtype=frozen_dtype("cpu"))
    with torch.inference_mode():
        output = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                                dtype=torch.long), do_sample=False, max_new_tokens=MAX_TOKENS,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    reply = output[0, len(prompt):].tolist()
    return reply[:reply.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in reply else reply


def with_second_stop(model_dir: Path, folder: Path, stop: int) -> Path:
    """`model_dir`'s files linked into `folder`, with a generation config stopping on EOS and on `stop`."""
    folder.mkdir()
    for file in model_dir.iterdir():
        if file.name != "generation_config.json":
            (folder / file.name).symlink_to(file.resolve())
    tokenizer = load_tokenizer(str(model_dir))
    GenerationConfig(eos_token_id=[tokenizer.eos_token_id, stop], pad_token_id=tokenizer.pad_token_id,
                     bos_token_id=tokenizer.bos_token_id).save_pretrained(folder)
    return folder


def assert_eval_matches_serve(model_dir: Path, docs: Path, tmp_path: Path, monkeypatch) -> str:
    """Run `hone eval` and `hone serve` on the same question and documents, compare, return the served reply."""
    reply_ids = greedy_reply(model_dir, docs)
    stop = reply_ids[min(3, len(reply_ids) - 1)]
    model_dir = with_second_stop(model_dir, tmp_path / "two-stops", stop)

    generate_calls = []
    original_generate = GenerationMixin.generate

    def recording_generate(model, *args, **kwargs):
        generate_calls.append(kwargs)
        return original_generate(model, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "generate", recording_generate)
    test_file = tmp_path / "test.jsonl"
    test_file.write_text(json.dumps({"messages": [*QUESTION, {"role": "assistant", "content": "In 14 days."}]}) + "\n")
    report = evaluate(base=str(model_dir), data=test_file, docs=docs, out=tmp_path / "eval", candidates=[RAG_DOCS],
                      max_new_tokens=MAX_TOKENS, metrics={"perplexity": False}, show_progress=False)
    evaluated = report["examples"][0]["outputs"]["rag-docs"]
    [call] = generate_calls
    eval_ids = call["input_ids"][0][call["attention_mask"][0].bool()].tolist()
    eval_stops = set(call["eos_token_id"])

    build_index(docs, tmp_path / "docs.index", show_progress=False)
    app = create_app(ServeConfig(base=str(model_dir), base_id="served", threads=1,
                                 indexes={"docs": tmp_path / "docs.index"},
                                 database=f"sqlite:///{tmp_path / 'hone.db'}"))
    engine = app.state.server.engine
    served_ids = []
    submit = engine.submit
    monkeypatch.setattr(engine, "submit", lambda sequence: (served_ids.append(sequence.prompt_ids), submit(sequence)))
    with serve_app(app) as url:
        reply = openai.OpenAI(base_url=url, api_key="unused", max_retries=0).chat.completions.create(
            model="served", messages=QUESTION, max_tokens=MAX_TOKENS, temperature=0,
            extra_body={"index": "docs", "top_k": 1})

    assert reply.model_extra["sources"][0]["source"] == "refunds.md"
    assert served_ids == [eval_ids]  # the same passage, in the same words, rendered the same way
    assert evaluated["prompt_tokens"] == reply.usage.prompt_tokens == len(eval_ids)
    assert eval_stops == set(engine.eos_ids) and stop in eval_stops
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens == evaluated["tokens"] == reply_ids.index(stop)  # stopped on `stop`
    assert reply.choices[0].message.content.strip() == evaluated["text"]
    return reply.choices[0].message.content


def test_eval_feeds_stops_and_answers_like_the_server(tiny_model_dir, docs, tmp_path, monkeypatch):
    assert_eval_matches_serve(tiny_model_dir, docs, tmp_path, monkeypatch)


@pytest.mark.real_model
def test_eval_answers_like_the_server_on_the_real_model(docs, tmp_path, monkeypatch):
    own_home = os.environ["HONE_HOME"]
    monkeypatch.setenv("HONE_HOME", str(shared_home()))
    real = local_model_dir("smollm2-135m-instruct")
    monkeypatch.setenv("HONE_HOME", own_home)  # the shared cache gets no fingerprints of this test's folders
    reply = assert_eval_matches_serve(real, docs, tmp_path, monkeypatch)
    assert reply.strip(), "a real reply, cut by the second stop token after a few tokens"
