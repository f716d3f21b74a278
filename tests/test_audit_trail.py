"""Every state change of the service lands in the audit log, in the same transaction, naming who made it."""

from __future__ import annotations

import io

import httpx
import openai
from conftest import serve_app
from jobs_helpers import FAST, chat_lines, wait_for
from sqlalchemy import select

from hone.api.app import create_app
from hone.api.keys import KeyStore
from hone.audit import verify
from hone.serve.config import ServeConfig
from hone.store import engine_for, session
from hone.store.tables import AuditLogEntry


def entries(db_url: str) -> list[tuple[str, str, str]]:
    with session(engine_for(db_url)) as db:
        return [(e.action, e.actor, e.object_id) for e in db.scalars(select(AuditLogEntry).order_by(AuditLogEntry.seq))]


def test_a_jobs_life_is_in_the_audit_log_with_its_actors(tiny_model_dir, tmp_path):
    db_url = f"sqlite:///{tmp_path / 'hone.db'}"
    key = KeyStore(db_url).create("support-app")
    config = ServeConfig(base=str(tiny_model_dir), base_id="tiny", dtype="fp32", threads=1, database=db_url,
                         jobs={"poll_s": 0.05})
    with serve_app(create_app(config)) as url:
        client = openai.OpenAI(base_url=url, api_key=key, max_retries=0)
        uploaded = client.files.create(file=("t.jsonl", io.BytesIO(("\n".join(chat_lines(12)) + "\n").encode())),
                                       purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id, extra_body={"hone": FAST},
                                             method={"type": "supervised",
                                                     "supervised": {"hyperparameters": {"n_epochs": 1}}})
        done = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status == "succeeded" and j, 120)
        refused = httpx.post(f"{url}/unload_lora_adapter", json={"lora_name": "x"},
                             headers={"Authorization": f"Bearer {key}"})
        assert refused.status_code == 403
    log = entries(db_url)
    actions = [action for action, _, _ in log]
    assert actions[0] == "key.created"
    assert actions[1:4] == ["file.uploaded", "job.created", "job.queued"]
    assert actions[4] == "job.started"
    assert {"model.registered", "job.succeeded"} <= set(actions[5:])
    actors: dict[str, str] = {}
    for action, actor, _ in log:
        actors.setdefault(action, actor)  # the first time each action happened
    assert actors["file.uploaded"] == actors["job.created"] == "support-app"
    assert actors["job.started"].startswith("worker ") and actors["job.succeeded"].startswith("worker ")
    assert ("model.registered", actors["job.succeeded"], done.fine_tuned_model) in log
    assert ("file.uploaded", actors["job.succeeded"], done.result_files[0]) in log  # the results CSV
    assert verify(db_url).ok
