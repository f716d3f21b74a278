"""The fine-tuning service over a real socket, driven by the official `openai` SDK as a migrating team would:
files, jobs, events, checkpoints, results, chat with the fine-tuned model and its checkpoints, control and
pagination; and every bad input answered in OpenAI's error shape, never a 500."""

from __future__ import annotations

import io
import json

import httpx
import openai
import pytest
from conftest import serve_app
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jobs_helpers import FAST, chat_lines, wait_for

from hone.api.app import create_app
from hone.serve.config import load_serve_config

FINISHED = ("succeeded", "failed", "cancelled")


@pytest.fixture
def service_url(tiny_model_dir):
    config = load_serve_config(base=str(tiny_model_dir), base_id="tiny",
                               jobs={"bases": {"gpt-4o-mini-2024-07-18": str(tiny_model_dir)}, "poll_s": 0.05},
                               limits={"max_upload_bytes": 200_000})
    with serve_app(create_app(config)) as url:
        yield url


@pytest.fixture
def client(service_url):
    return openai.OpenAI(base_url=service_url, api_key="unused", max_retries=0)


def jsonl(lines: list[str]) -> io.BytesIO:
    return io.BytesIO(("\n".join(lines) + "\n").encode())


def finished(client, job_id: str, seconds: float = 120):
    return wait_for(lambda: (job := client.fine_tuning.jobs.retrieve(job_id)).status in FINISHED and job, seconds)


def test_the_openai_sdk_fine_tunes_and_then_chats_with_the_model(client):
    uploaded = client.files.create(file=("train.jsonl", jsonl(chat_lines(24))), purpose="fine-tune")
    assert uploaded.status == "processed" and uploaded.filename == "train.jsonl"
    job = client.fine_tuning.jobs.create(
        model="gpt-4o-mini-2024-07-18", training_file=uploaded.id, suffix="support", seed=1,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": "auto"}}},
        metadata={"team": "support"}, extra_body={"hone": FAST})
    assert job.status == "queued" and job.hyperparameters.batch_size == 1  # "auto" resolved from 24 examples

    done = finished(client, job.id)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:gpt-4o-mini-2024-07-18:default:support:{job.id[-8:]}"

    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert events[0].message == "The job has successfully completed"
    steps = [e.data["step"] for e in events if e.type == "metrics"]
    assert steps == list(range(48, 0, -1))

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [48, 45, 40]
    results = client.files.content(done.result_files[0]).text.splitlines()
    assert results[0].startswith("step,") and len(results) == 49

    models = {m.id: m for m in client.models.list().data}
    assert models[done.fine_tuned_model].parent == "tiny" and models[done.fine_tuned_model].owned_by == "default"
    for name in (done.fine_tuned_model, checkpoints[-1].fine_tuned_model_checkpoint):
        reply = client.chat.completions.create(model=name, max_tokens=4, temperature=0,
                                               messages=[{"role": "user", "content": "which animal is number 3?"}])
        assert reply.model == name and reply.usage.completion_tokens >= 1

    tagged = client.fine_tuning.jobs.list(extra_query={"metadata[team]": "support"}).data
    assert [j.id for j in tagged] == [job.id]

    registered = httpx.get(f"{client.base_url}registry/models", params={"model": "support"}).json()["data"]
    assert [(v["name"], v["version"], v["author"]) for v in registered] == [(done.fine_tuned_model, 1, "open access")]
    refused = httpx.post(f"{client.base_url}registry/models/support/promotions",
                         json={"version": "1", "alias": "champion"})  # trained without its evaluation
    assert refused.status_code == 409 and "no evaluation against the base model" in refused.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="support@champion", messages=[{"role": "user", "content": "hi"}])


def test_jobs_are_cancelled_paused_resumed_and_listed_in_pages(client):
    uploaded = client.files.create(file=("train.jsonl", jsonl(chat_lines(24))), purpose="fine-tune")
    long = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 40}}}
    slow = client.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id, method=long,
                                          extra_body={"hone": {**FAST, "training": {"save_every": 2}}})
    wait_for(lambda: client.fine_tuning.jobs.checkpoints.list(slow.id).data, 60)
    paused = client.fine_tuning.jobs.pause(slow.id)
    assert paused.status in ("running", "paused")
    wait_for(lambda: client.fine_tuning.jobs.retrieve(slow.id).status == "paused", 30)
    assert client.fine_tuning.jobs.resume(slow.id).status == "queued"
    wait_for(lambda: client.fine_tuning.jobs.retrieve(slow.id).status == "running", 30)
    client.fine_tuning.jobs.cancel(slow.id)
    assert finished(client, slow.id, 30).status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.resume(slow.id)

    queued = [client.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id, extra_body={"hone": FAST})
              for _ in range(2)]
    for job in queued:
        client.fine_tuning.jobs.cancel(job.id)
    first = client.fine_tuning.jobs.list(limit=2)
    assert first.has_more and [j.id for j in first.data] == [queued[1].id, queued[0].id]
    rest = client.fine_tuning.jobs.list(limit=2, after=first.data[-1].id)
    assert [j.id for j in rest.data] == [slow.id] and not rest.has_more
    newer = client.files.create(file=("more.jsonl", jsonl(chat_lines(12))), purpose="fine-tune")
    files = client.files.list(limit=1)
    assert [f.id for f in files.data] == [newer.id] and files.has_more
    assert [f.id for f in client.files.list(after=newer.id).data] == [uploaded.id]


def test_bad_inputs_get_openai_errors_naming_the_parameter(client, service_url):
    uploaded = client.files.create(file=("train.jsonl", jsonl(chat_lines(12))), purpose="fine-tune")
    with pytest.raises(openai.NotFoundError) as base:
        client.fine_tuning.jobs.create(model="llama-9000", training_file=uploaded.id)
    assert base.value.body["code"] == "model_not_found" and base.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError) as missing:
        client.fine_tuning.jobs.create(model="tiny", training_file="file-doesnotexist")
    assert missing.value.body["param"] == "training_file"
    with pytest.raises(openai.BadRequestError) as epochs:
        zero = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}}
        client.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id, method=zero)
    assert epochs.value.body["param"] == "method.supervised.hyperparameters.n_epochs"
    with pytest.raises(openai.BadRequestError) as typo:
        client.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id,
                                       extra_body={"hone": {"lora": {"rank": 4}}})
    assert typo.value.body["param"] == "hone.lora.rank" and "did you mean 'r'" in typo.value.body["message"]
    with pytest.raises(openai.BadRequestError) as path:
        client.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id,
                                       extra_body={"hone": {"output_dir": "/tmp/elsewhere"}})
    assert path.value.body["param"] == "hone.output_dir"

    broken = chat_lines(20)
    broken[16] = '{"messages": [{"role": "user", "content": "hi"}, {"role": "customer", "content": "x"}]}'
    bad_file = client.files.create(file=("bad.jsonl", jsonl(broken)), purpose="fine-tune")
    problems = httpx.get(f"{service_url}/files/{bad_file.id}/problems").json()["data"]
    assert problems[0]["line"] == 17 and problems[0]["field"] == "messages[1].role"
    failed = finished(client, client.fine_tuning.jobs.create(model="tiny", training_file=bad_file.id).id)
    assert failed.status == "failed" and failed.error.code == "invalid_training_file"
    assert "line 17" in failed.error.message and failed.error.param == "training_file"

    with pytest.raises(openai.APIStatusError) as too_big:
        client.files.create(file=("big.jsonl", io.BytesIO(b"x" * 300_000)), purpose="fine-tune")
    assert too_big.value.status_code == 413
    with pytest.raises(openai.BadRequestError) as purpose:
        client.files.create(file=("train.jsonl", jsonl(chat_lines(12))), purpose="assistants")
    assert purpose.value.body["param"] == "purpose"
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve("file-../../etc/passwd")
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-nope")


def test_the_same_content_is_stored_once(client):
    first = client.files.create(file=("a.jsonl", jsonl(chat_lines(12))), purpose="fine-tune")
    second = client.files.create(file=("b.jsonl", jsonl(chat_lines(12))), purpose="fine-tune")
    assert first.id != second.id
    stored = [client.files.with_raw_response.retrieve(f.id).http_response.json()["hone"]["sha256"]
              for f in (first, second)]
    assert stored[0] == stored[1]
    client.files.delete(first.id)
    assert client.files.content(second.id).text.count("\n") == 12


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.one_of(st.binary(max_size=2000),
                         st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                                      lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
                                      max_leaves=30).map(lambda value: json.dumps(value).encode())),
       filename=st.text(max_size=80))
def test_any_upload_is_answered_without_a_server_error(service_url, content, filename):
    response = httpx.post(f"{service_url}/files", data={"purpose": "fine-tune"},
                          files={"file": (filename or "x.jsonl", content)})
    assert response.status_code in (200, 400), response.text
    body = response.json()
    assert "Traceback" not in response.text and "/hone-home/" not in response.text
    if response.status_code == 200:
        assert body["status"] in ("processed", "error")
        assert body["hone"]["usable"] == (body["hone"]["errors"] == 0 and body["hone"]["examples"] > 0)


def test_another_projects_files_jobs_and_models_answer_404(client, tiny_model_dir, tmp_path):
    from hone.jobs.service import JobService
    from hone.jobs.spec import JobRequest
    from hone.jobs.worker import Worker, WorkerSettings

    theirs = JobService(bases={"tiny": str(tiny_model_dir)})  # the same database, another project's objects
    stored = theirs.files.upload("other", io.BytesIO(("\n".join(chat_lines(12)) + "\n").encode()), "t.jsonl",
                                 "fine-tune")
    job = theirs.create("other", JobRequest(model="tiny", training_file=stored.id, hone=FAST, suffix="secret"))
    Worker(settings=WorkerSettings(poll_s=0.05)).run(max_jobs=1)
    model = theirs.get("other", job["id"])["fine_tuned_model"]
    assert model and ":other:secret:" in model

    for call in (lambda: client.files.retrieve(stored.id), lambda: client.files.content(stored.id),
                 lambda: client.files.delete(stored.id), lambda: client.fine_tuning.jobs.retrieve(job["id"]),
                 lambda: client.fine_tuning.jobs.cancel(job["id"]),
                 lambda: client.fine_tuning.jobs.list_events(job["id"]),
                 lambda: client.fine_tuning.jobs.checkpoints.list(job["id"]),
                 lambda: client.fine_tuning.jobs.create(model="tiny", training_file=stored.id),
                 lambda: client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])):
        with pytest.raises(openai.NotFoundError):
            call()
    assert model not in [m.id for m in client.models.list().data]
    assert job["id"] not in [j.id for j in client.fine_tuning.jobs.list().data]
