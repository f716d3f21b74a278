"""Projects and roles on API keys, over a real socket with the openai SDK: a viewer reads, a developer also
writes and calls models, only an admin touches the server's adapters; another project's objects and
responses answer 404."""

from __future__ import annotations

import io

import httpx
import openai
import pytest
from conftest import serve_app
from jobs_helpers import FAST, chat_lines
from typer.testing import CliRunner

from hone.api.app import create_app
from hone.api.keys import KeyStore
from hone.cli import app as cli
from hone.serve.config import ServeConfig

CHAT = [{"role": "user", "content": "hello"}]


@pytest.fixture
def served(tiny_model_dir, tmp_path):
    db = f"sqlite:///{tmp_path / 'hone.db'}"
    store = KeyStore(db)
    keys = {"viewer": store.create("reader", role="viewer"), "developer": store.create("builder"),
            "admin": store.create("operator", role="admin"), "other": store.create("rival", project="other")}
    config = ServeConfig(base=str(tiny_model_dir), base_id="tiny", dtype="fp32", threads=1, database=db,
                         models={"tiny": {"capture": True}}, jobs={"worker": False})
    with serve_app(create_app(config)) as url:
        yield url, {who: openai.OpenAI(base_url=url, api_key=key, max_retries=0) for who, key in keys.items()}, keys


def data() -> tuple[str, io.BytesIO]:
    return "train.jsonl", io.BytesIO(("\n".join(chat_lines(12)) + "\n").encode())


def test_each_role_may_do_what_it_should_and_no_more(served):
    url, client, keys = served
    with pytest.raises(openai.PermissionDeniedError) as viewer_upload:
        client["viewer"].files.create(file=data(), purpose="fine-tune")
    assert viewer_upload.value.body["code"] == "insufficient_role"
    assert "the key 'reader' has the viewer role" in viewer_upload.value.body["message"]
    with pytest.raises(openai.PermissionDeniedError):
        client["viewer"].chat.completions.create(model="tiny", messages=CHAT, max_tokens=2)

    uploaded = client["developer"].files.create(file=data(), purpose="fine-tune")
    with pytest.raises(openai.PermissionDeniedError):
        client["viewer"].fine_tuning.jobs.create(model="tiny", training_file=uploaded.id)
    job = client["developer"].fine_tuning.jobs.create(model="tiny", training_file=uploaded.id,
                                                      extra_body={"hone": FAST})
    assert client["viewer"].fine_tuning.jobs.retrieve(job.id).status == "queued"  # viewers read
    assert [f.id for f in client["viewer"].files.list().data] == [uploaded.id]
    with pytest.raises(openai.PermissionDeniedError):
        client["viewer"].fine_tuning.jobs.cancel(job.id)

    for who in ("developer", "viewer"):
        refused = httpx.post(f"{url}/unload_lora_adapter", json={"lora_name": "nothing"},
                             headers={"Authorization": f"Bearer {keys[who]}"})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "insufficient_role"
    admin = httpx.post(f"{url}/unload_lora_adapter", json={"lora_name": "nothing"},
                       headers={"Authorization": f"Bearer {keys['admin']}"})
    assert admin.status_code == 404  # past the role check: there is no such adapter


def test_another_project_sees_nothing_and_cannot_correct_answers(served):
    url, client, keys = served
    uploaded = client["developer"].files.create(file=data(), purpose="fine-tune")
    job = client["developer"].fine_tuning.jobs.create(model="tiny", training_file=uploaded.id,
                                                      extra_body={"hone": FAST})
    reply = client["developer"].chat.completions.create(model="tiny", messages=CHAT, max_tokens=2)
    rival = client["other"]
    for call in (lambda: rival.files.retrieve(uploaded.id), lambda: rival.fine_tuning.jobs.retrieve(job.id),
                 lambda: rival.fine_tuning.jobs.list_events(job.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    assert rival.files.list().data == [] and rival.fine_tuning.jobs.list().data == []

    def feedback(who: str) -> httpx.Response:
        return httpx.post(f"{url}/feedback", json={"response_id": reply.id, "rating": 1, "correction": "poisoned"},
                          headers={"Authorization": f"Bearer {keys[who]}"})

    assert feedback("other").status_code == 404  # a correction is for the project that got the answer
    assert feedback("developer").status_code == 200


def test_an_open_server_never_lets_a_client_touch_its_disk(tiny_model_dir, tmp_path):
    config = ServeConfig(base=str(tiny_model_dir), base_id="tiny", dtype="fp32", threads=1,
                         database=f"sqlite:///{tmp_path / 'hone.db'}", jobs={"worker": False})
    with serve_app(create_app(config)) as url:
        refused = httpx.post(f"{url}/load_lora_adapter", json={"lora_name": "x", "lora_path": "/etc"})
        assert refused.status_code == 403 and "/etc" not in refused.text
        assert httpx.get(f"{url}/models").status_code == 200


def test_keys_are_created_with_a_project_and_a_role(tmp_path):
    db = f"sqlite:///{tmp_path / 'hone.db'}"
    runner = CliRunner()
    made = runner.invoke(cli, ["keys", "create", "auditor", "--project", "legal", "--role", "viewer", "--db", db])
    assert made.exit_code == 0, made.output
    listed = runner.invoke(cli, ["keys", "list", "--db", db, "--json"])
    assert '"project": "legal"' in listed.stdout and '"role": "viewer"' in listed.stdout
    wrong = runner.invoke(cli, ["keys", "create", "x", "--role", "superuser", "--db", db])
    assert wrong.exit_code != 0 and "not one of viewer, developer, approver, admin" in str(wrong.exception)
