"""Fine-tuning jobs through the Python API that the HTTP routes and `hone jobs` call: create, validate, run,
report, register; bad input; cancel, pause/resume and a worker killed mid-job."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import threading

import pytest
import torch
from jobs_helpers import FAST, adapter_weights, chat_lines, dpo_lines, wait_for, write_lines
from pydantic import ValidationError

from hone.errors import NotFoundError, RequestError
from hone.jobs.files import content_path
from hone.jobs.service import JobService, job_dir
from hone.jobs.spec import JobRequest
from hone.jobs.worker import Worker, WorkerSettings
from hone.registry.versions import Registry


@pytest.fixture
def service(tiny_model_dir):
    return JobService(bases={"tiny": str(tiny_model_dir)})


def upload(service: JobService, tmp_path, lines: list[str], name: str = "train.jsonl", project: str = "default"):
    path = write_lines(tmp_path / name, lines)
    with open(path, "rb") as handle:
        return service.files.upload(project, handle, name, "fine-tune")


def request(file_id: str, epochs: int = 2, **fields) -> JobRequest:
    hone = {**FAST, **fields.pop("hone", {})}
    return JobRequest(model="tiny", training_file=file_id, seed=7, hone=hone,
                      method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": epochs}}},
                      **fields)


def run_worker(max_jobs: int = 1, **settings) -> Worker:
    worker = Worker(settings=WorkerSettings(poll_s=0.1, idle_poll_s=0.1, **settings))
    worker.run(max_jobs=max_jobs)
    return worker


def test_a_job_trains_reports_and_registers_its_model(service, tmp_path):
    stored = upload(service, tmp_path, chat_lines(24))
    job = service.create("default", request(stored.id, suffix="animals", metadata={"team": "zoo"}))
    assert job["status"] == "queued"
    assert job["hyperparameters"] == {"n_epochs": 2, "batch_size": 1, "learning_rate_multiplier": 1.0}

    run_worker()

    done = service.get("default", job["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["fine_tuned_model"] == f"ft:tiny:default:animals:{job['id'][-8:]}"
    assert done["trained_tokens"] > 0 and done["finished_at"] >= done["created_at"]
    events = service.events("default", job["id"], limit=100).data
    metrics = [e for e in events if e["type"] == "metrics"]
    assert [e["data"]["step"] for e in metrics] == list(range(48, 0, -1))  # newest first, every step once
    assert metrics[0]["data"]["total_steps"] == 48 and metrics[0]["data"]["train_loss"] > 0
    assert events[0]["message"] == "The job has successfully completed"
    page = service.events("default", job["id"], limit=5)
    assert page.has_more and len(page.data) == 5
    after = service.events("default", job["id"], after=page.data[-1]["id"], limit=3).data
    assert [e["id"] for e in after] == [e["id"] for e in events[5:8]]

    checkpoints = service.checkpoints("default", job["id"]).data
    assert [c["step_number"] for c in checkpoints] == [48, 45, 40]  # the newest 3, every 5 steps and the end
    assert checkpoints[0]["fine_tuned_model_checkpoint"] == done["fine_tuned_model"] + ":ckpt-step-48"

    (results_id,) = done["result_files"]
    results = service.files.get("default", results_id)
    assert results.purpose == "fine-tune-results"
    rows = list(csv.DictReader(io.StringIO(content_path(results.sha256).read_text())))
    assert len(rows) == 48 and rows[-1]["step"] == "48"

    version = Registry().show(done["fine_tuned_model"], project="default")
    assert version["training_file_sha256"] == stored.sha256 and version["job_id"] == job["id"]
    assert version["config"]["training"]["epochs"] == 2
    assert [link["stage"] for link in version["lineage"]] == ["dataset", "job", "run", "weights", "eval"]
    assert service.list("default", metadata={"team": "zoo"}).data[0]["id"] == job["id"]
    assert service.list("default", metadata={"team": "other"}).data == []


def test_broken_lines_fail_the_job_naming_the_line_and_nothing_trains(service, tmp_path):
    lines = chat_lines(20)
    lines[16] = '{"messages": [{"role": "user", "content": "hi"}, {"role": "customer", "content": "x"}]}'
    job = service.create("default", request(upload(service, tmp_path, lines).id))
    assert job["status"] == "failed"
    assert job["error"]["code"] == "invalid_training_file" and job["error"]["param"] == "training_file"
    assert "line 17" in job["error"]["message"] and "messages[1].role" in job["error"]["message"]
    assert Worker().claim() is None  # nothing left to train
    assert not (job_dir(job["id"]) / "run").exists()


def test_file_problems_are_refused_with_their_codes(service, tmp_path):
    few = service.create("default", request(upload(service, tmp_path, chat_lines(5)).id))
    assert few["error"]["code"] == "invalid_n_examples"
    pairs = service.create("default", request(upload(service, tmp_path, dpo_lines(12), "dpo.jsonl").id))
    assert pairs["error"]["code"] == "invalid_training_file" and "preference pairs" in pairs["error"]["message"]
    chats = upload(service, tmp_path, chat_lines(12), "chat.jsonl")
    dpo = service.create("default", JobRequest(model="tiny", training_file=chats.id, method={"type": "dpo"}))
    assert dpo["error"]["code"] == "invalid_training_file" and "conversations" in dpo["error"]["message"]


def test_bad_requests_name_the_parameter(service, tmp_path):
    stored = upload(service, tmp_path, chat_lines(12))
    with pytest.raises(NotFoundError) as unknown_base:
        service.create("default", JobRequest(model="gpt-9", training_file=stored.id))
    assert unknown_base.value.code == "model_not_found" and unknown_base.value.param == "model"
    with pytest.raises(NotFoundError) as missing:
        service.create("default", JobRequest(model="tiny", training_file="file-nope"))
    assert missing.value.param == "training_file"
    with pytest.raises(NotFoundError):  # another project's file is not there at all
        service.create("other", JobRequest(model="tiny", training_file=stored.id))
    with pytest.raises(ValidationError, match="n_epochs must be between 1 and 50"):
        request(stored.id, epochs=500)
    with pytest.raises(RequestError) as typo:
        service.create("default", request(stored.id, hone={"training": {"learning_rate": 1e-3}}))
    assert typo.value.param == "hone.training.learning_rate" and "did you mean 'lr'" in typo.value.message
    with pytest.raises(RequestError) as path:
        service.create("default", request(stored.id, hone={"data": {"train": "/etc/passwd"}}))
    assert path.value.param == "hone.data.train"
    with pytest.raises(NotFoundError):
        service.get("other", service.create("default", request(stored.id))["id"])


def test_cancel_stops_a_running_job_within_seconds_and_keeps_its_checkpoint(service, tmp_path):
    job = service.create("default", request(upload(service, tmp_path, chat_lines(24)).id, epochs=50,
                                            hone={"training": {"save_every": 2}}))
    thread = _run_in_thread()
    wait_for(lambda: service.checkpoints("default", job["id"]).data, 60)
    service.cancel("default", job["id"])
    thread.join(timeout=30)
    assert not thread.is_alive()
    cancelled = service.get("default", job["id"])
    assert cancelled["status"] == "cancelled" and cancelled["fine_tuned_model"] is None
    assert service.checkpoints("default", job["id"]).data  # kept
    with pytest.raises(RequestError, match="cannot be cancel"):
        service.cancel("default", job["id"])


def _run_in_thread(max_jobs: int = 1):
    worker = Worker(settings=WorkerSettings(poll_s=0.05))
    thread = threading.Thread(target=worker.run, kwargs={"max_jobs": max_jobs})
    thread.start()
    return thread


def test_pause_resume_and_a_killed_worker_all_end_with_the_uninterrupted_weights(service, tmp_path):
    stored = upload(service, tmp_path, chat_lines(24))

    def make():
        return service.create("default", request(stored.id, epochs=3, hone={"training": {"save_every": 2}}))

    reference = make()
    run_worker()
    assert service.get("default", reference["id"])["status"] == "succeeded"
    expected = adapter_weights(job_dir(reference["id"]))

    paused = make()
    thread = _run_in_thread()
    wait_for(lambda: service.checkpoints("default", paused["id"]).data, 60, every=0.02)
    service.pause("default", paused["id"])
    thread.join(timeout=30)
    assert service.get("default", paused["id"])["status"] == "paused"
    service.resume("default", paused["id"])
    run_worker()
    assert service.get("default", paused["id"])["status"] == "succeeded"

    orphaned = make()
    doomed = subprocess.Popen([sys.executable, "-m", "hone", "worker", "--lease", "1", "--max-jobs", "1"],
                              env={**os.environ}, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: service.checkpoints("default", orphaned["id"]).data, 90, every=0.02)
    finally:
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
    assert service.get("default", orphaned["id"])["status"] == "running"  # its lease still says so
    run_worker(lease_s=1)
    assert service.get("default", orphaned["id"])["status"] == "succeeded"
    events = [e["message"] for e in service.events("default", orphaned["id"], limit=100).data]
    assert "Fine-tuning job continues from its last checkpoint" in events

    for job in (paused, orphaned):
        for name, value in adapter_weights(job_dir(job["id"])).items():
            torch.testing.assert_close(value, expected[name], rtol=0, atol=0)


def test_a_job_holds_out_examples_and_ends_with_the_verdict_of_its_evaluation(service, tmp_path):
    stored = upload(service, tmp_path, chat_lines(50))
    job = service.create("default", request(stored.id, epochs=1, hone={
        "eval": {"enabled": True, "max_examples": 6, "probe_limit": 3}}))
    assert job["hyperparameters"]["batch_size"] == 2  # "auto" sized from the 40 examples left to train on
    events = [e["message"] for e in service.events("default", job["id"]).data]
    assert "Held out 10 of 50 training examples to evaluate the fine-tune after training" in events
    assert len((job_dir(job["id"]) / "heldout.jsonl").read_text().splitlines()) == 10

    run_worker()

    done = service.get("default", job["id"])
    assert done["status"] == "succeeded", done["error"]
    evaluation = done["evaluation"]
    assert evaluation["verdict"] in ("SHIP", "NOT WORTH IT", "REGRESSION", "INCOMPLETE") and evaluation["reasons"]
    assert {"3-shot", "rag"} <= set(evaluation["figures"])
    assert (job_dir(job["id"]) / evaluation["report"]).is_file()
    last = service.events("default", job["id"], limit=1).data[0]
    assert f"evaluation verdict {evaluation['verdict']}" in last["message"]
    assert Registry().show(done["fine_tuned_model"])["verdict"] == evaluation["verdict"]


def test_a_crash_in_training_fails_the_job_without_server_paths_and_the_worker_goes_on(service, tmp_path):
    stored = upload(service, tmp_path, chat_lines(12))
    broken = service.create("default", request(stored.id, hone={"lora": {"target_modules": ["no_such_layer"]}}))
    fine = service.create("default", request(stored.id, epochs=1))
    run_worker(max_jobs=2)
    failed = service.get("default", broken["id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "training_failed"
    assert "lora.target_modules" in failed["error"]["message"]
    assert str(tmp_path) not in failed["error"]["message"]
    assert service.get("default", fine["id"])["status"] == "succeeded"


def test_the_jobs_command_line_calls_the_same_service(tiny_model_dir, tmp_path):
    import json

    import yaml
    from typer.testing import CliRunner

    from hone.cli import app

    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({"base": str(tiny_model_dir), "jobs": {"bases": {"tiny": str(tiny_model_dir)}}}))
    data = write_lines(tmp_path / "train.jsonl", chat_lines(12))
    runner = CliRunner()
    created = runner.invoke(app, ["jobs", "create", "--model", "tiny", "--training-file", str(data), "--config",
                                  str(config), "--n-epochs", "1", "--hone", '{"tracking": {"enabled": false}}',
                                  "--json"])
    assert created.exit_code == 0, created.output
    job = json.loads(created.stdout[created.stdout.index("{"):])
    assert job["status"] == "queued" and job["hyperparameters"]["n_epochs"] == 1
    listed = json.loads(runner.invoke(app, ["jobs", "list", "--json"]).stdout)
    assert [j["id"] for j in listed["data"]] == [job["id"]]
    cancelled = runner.invoke(app, ["jobs", "cancel", job["id"], "--json"])
    assert json.loads(cancelled.stdout)["status"] == "cancelled"
    refused = runner.invoke(app, ["jobs", "resume", job["id"]])
    assert refused.exit_code != 0 and "only a paused job can be resumed" in str(refused.exception)
    typo = runner.invoke(app, ["jobs", "create", "--model", "tiny", "--training-file", str(data), "--config",
                               str(config), "--hone", '{"lora": {"rank": 4}}'])
    assert typo.exit_code != 0 and "did you mean 'r'" in str(typo.exception)


def test_a_job_the_executor_cannot_start_goes_back_to_the_queue(service, tmp_path):
    from hone.errors import HoneError

    class Unreachable:
        name = "ray"

        def start(self, job_id, folder):
            raise HoneError("cannot reach the Ray cluster at http://10.0.0.1:8265")

    job = service.create("default", request(upload(service, tmp_path, chat_lines(12)).id))
    worker = Worker(executor=Unreachable(), settings=WorkerSettings(poll_s=0.05))
    worker.stopping.set()  # no waiting before the next claim in this test
    worker.run_job(worker.claim())
    assert service.get("default", job["id"])["status"] == "queued"
    latest = service.events("default", job["id"], limit=1).data[0]
    assert latest["level"] == "warn" and "cannot reach the Ray cluster" in latest["message"]
    run_worker()
    assert service.get("default", job["id"])["status"] == "succeeded"


def test_the_registry_command_line_shows_the_lineage_and_refuses_unknown_names(service, tmp_path):
    import json

    from typer.testing import CliRunner

    from hone.cli import app

    stored = upload(service, tmp_path, chat_lines(12))
    job = service.create("default", request(stored.id, epochs=1, suffix="cli"))
    run_worker()
    name = service.get("default", job["id"])["fine_tuned_model"]
    runner = CliRunner()
    listed = json.loads(runner.invoke(app, ["registry", "list", "--json"]).stdout)
    assert [v["name"] for v in listed["models"]] == [name]
    shown = json.loads(runner.invoke(app, ["registry", "show", name, "--json"]).stdout)
    assert shown["lineage"][0]["sha256"] == stored.sha256 and shown["lineage"][1]["id"] == job["id"]
    assert name in runner.invoke(app, ["registry", "show", name]).stdout
    unknown = runner.invoke(app, ["registry", "show", "ft:tiny:default::nothing"])
    assert unknown.exit_code != 0 and "does not exist" in str(unknown.exception)


def test_partial_uploads_a_crash_left_are_removed_and_fresh_ones_kept(tmp_path):
    import os
    import time

    from hone.jobs.files import objects_dir, remove_stale_uploads

    old, fresh = objects_dir() / ".upload-old", objects_dir() / ".upload-fresh"
    old.write_bytes(b"half a file")
    fresh.write_bytes(b"being written")
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (day_ago, day_ago))
    assert remove_stale_uploads() == 1
    assert not old.exists() and fresh.exists()
