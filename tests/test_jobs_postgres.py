"""The fine-tuning service on PostgreSQL: the openai SDK against `hone serve` (its own worker) while a second
worker races it for the same queue; every job runs exactly once."""

from __future__ import annotations

import io
import os
import threading

import openai
import pytest
from conftest import serve_app
from jobs_helpers import FAST, chat_lines, wait_for
from sqlalchemy import select
from store_fixtures import POSTGRES_ENV, _fresh_postgres_database

from hone.api.app import create_app
from hone.jobs.worker import Worker, WorkerSettings
from hone.serve.config import load_serve_config
from hone.store import engine_for, session
from hone.store.tables import FineTuningJob, JobEvent

JOBS = 4


@pytest.fixture
def pg_url(request):
    yield from _fresh_postgres_database(os.environ.get(POSTGRES_ENV) or request.getfixturevalue("postgres_url"))


def test_two_workers_share_the_queue_and_never_run_a_job_twice(tiny_model_dir, pg_url):
    config = load_serve_config(base=str(tiny_model_dir), base_id="tiny", database=pg_url,
                               jobs={"poll_s": 0.05, "lease_s": 5})
    rival = Worker(pg_url, settings=WorkerSettings(poll_s=0.05, idle_poll_s=0.05, lease_s=5), name="rival")
    thread = threading.Thread(target=rival.run)
    thread.start()
    try:
        with serve_app(create_app(config)) as url:
            client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
            data = io.BytesIO(("\n".join(chat_lines(12)) + "\n").encode())
            uploaded = client.files.create(file=("train.jsonl", data), purpose="fine-tune")
            method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}}
            jobs = [client.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id, method=method,
                                                   suffix=f"race{i}", extra_body={"hone": FAST})
                    for i in range(JOBS)]

            def all_succeeded():
                found = [client.fine_tuning.jobs.retrieve(j.id) for j in jobs]
                return found if all(j.status == "succeeded" for j in found) else None

            done = wait_for(all_succeeded, 180, every=0.2)
            chat = client.chat.completions.create(model=done[0].fine_tuned_model, max_tokens=2,
                                                  messages=[{"role": "user", "content": "hi"}])
            assert chat.model == done[0].fine_tuned_model
    finally:
        rival.stop()
        thread.join(timeout=60)
    engine = engine_for(pg_url)
    with session(engine) as db:
        rows = db.scalars(select(FineTuningJob).where(FineTuningJob.id.in_([j.id for j in jobs]))).all()
        started = db.scalars(select(JobEvent.job_id).where(JobEvent.message == "Fine-tuning job started")).all()
    assert all(row.attempts == 1 for row in rows)
    assert sorted(started) == sorted(j.id for j in jobs)  # each claimed once, by one worker
