"""Two projects on one server, over a real socket: with project beta's keys, every route given project alpha's
ids answers 404 (or, for an index, exactly what an unknown name gets), and beta's lists hold none of alpha's
objects. Roles still hold: viewers do not create jobs, only admins read captured traffic, only approvers and
admins read the audit log."""

from __future__ import annotations

import io
import json

import httpx
import openai
import pytest
from conftest import serve_app
from jobs_helpers import FAST, chat_lines, wait_for
from sqlalchemy import text
from typer.testing import CliRunner

from hone.api.app import create_app
from hone.api.keys import KeyStore
from hone.audit import entries
from hone.cli import app as cli
from hone.monitor.capture import CaptureStore
from hone.serve.config import ServeConfig, load_serve_config
from hone.store import engine_for

CHAT = [{"role": "user", "content": "How fast are refunds paid? Mail jane.doe@example.com"}]
KEYS = {"alpha-admin": ("alpha", "admin"), "alpha-auditor": ("alpha", "approver"), "alpha-dev": ("alpha", "developer"),
        "alpha-viewer": ("alpha", "viewer"), "beta-admin": ("beta", "admin"), "beta-dev": ("beta", "developer")}


@pytest.fixture(scope="module")
def index_path(tmp_path_factory):
    from hone.retrieval.store import build_index

    folder = tmp_path_factory.mktemp("kb")
    (folder / "docs").mkdir()
    (folder / "docs" / "refunds.md").write_text("Refunds are paid within 14 days of the return arriving.\n")
    return build_index(folder / "docs", folder / "docs.index", show_progress=False)["index"]


@pytest.fixture
def served(tiny_model_dir, tmp_path, index_path):
    db = f"sqlite:///{tmp_path / 'hone.db'}"
    store = KeyStore(db)
    keys = {name: store.create(name, project=project, role=role) for name, (project, role) in KEYS.items()}
    config = ServeConfig(base=str(tiny_model_dir), base_id="tiny", dtype="fp32", threads=1, database=db,
                         models={"tiny": {"capture": True}}, jobs={"poll_s": 0.05},
                         indexes={"kb-alpha": {"path": index_path, "project": "alpha"},
                                  "kb-beta": {"path": index_path, "project": "beta"}})
    with serve_app(create_app(config)) as url:
        yield url, keys, db


def sdk(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0)


def http(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def chat(client: openai.OpenAI, model: str = "tiny", **extra) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(model=model, messages=CHAT, max_tokens=2, extra_body=extra or None)


def test_another_projects_keys_find_nothing_of_alpha(served):
    url, keys, db = served
    alpha, beta = sdk(url, keys["alpha-dev"]), sdk(url, keys["beta-dev"])
    alpha_auditor, beta_admin = http(url, keys["alpha-auditor"]), http(url, keys["beta-admin"])

    uploaded = alpha.files.create(file=("t.jsonl", io.BytesIO(("\n".join(chat_lines(12)) + "\n").encode())),
                                  purpose="fine-tune")
    job = alpha.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id, extra_body={"hone": FAST},
                                        method={"type": "supervised",
                                                "supervised": {"hyperparameters": {"n_epochs": 1}}})
    reply = chat(alpha, index="kb-alpha", top_k=1)
    assert reply.model_extra["sources"][0]["source"] == "refunds.md"  # alpha's own index serves alpha
    rated = http(url, keys["alpha-dev"]).post("/feedback", json={"response_id": reply.id, "rating": 5})
    assert rated.status_code == 200
    beta_reply = chat(beta)
    done = wait_for(lambda: (j := alpha.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j,
                    120)
    assert done.status == "succeeded", done.error
    alpha_models = [done.fine_tuned_model] + [c.fine_tuned_model_checkpoint
                                              for c in alpha.fine_tuning.jobs.checkpoints.list(job.id).data]
    assert done.fine_tuned_model in [m.id for m in alpha.models.list().data]
    alpha_entries = alpha_auditor.get("/audit/entries", params={"limit": 1000}).json()["data"]
    assert {e["object_id"] for e in alpha_entries} >= {uploaded.id, job.id, done.fine_tuned_model}
    assert {e["project"] for e in alpha_entries} == {"alpha"}

    # Every route given alpha's ids, with beta's keys.
    for call in (lambda: beta.files.retrieve(uploaded.id), lambda: beta.files.content(uploaded.id),
                 lambda: beta.files.delete(uploaded.id), lambda: beta.fine_tuning.jobs.retrieve(job.id),
                 lambda: beta.fine_tuning.jobs.cancel(job.id), lambda: beta.fine_tuning.jobs.pause(job.id),
                 lambda: beta.fine_tuning.jobs.resume(job.id), lambda: beta.fine_tuning.jobs.list_events(job.id),
                 lambda: beta.fine_tuning.jobs.checkpoints.list(job.id),
                 lambda: beta.files.list(after=uploaded.id), lambda: beta.fine_tuning.jobs.list(after=job.id),
                 *[lambda model=model: chat(beta, model) for model in alpha_models]):
        with pytest.raises(openai.NotFoundError):
            call()
    beta_dev = http(url, keys["beta-dev"])
    assert beta_dev.get(f"/files/{uploaded.id}/problems").status_code == 404
    poisoned = beta_dev.post("/feedback", json={"response_id": reply.id, "rating": 1, "correction": "poisoned"})
    assert poisoned.status_code == 404
    assert beta_admin.get(f"/captures/{reply.id}").status_code == 404
    assert beta_admin.get("/captures", params={"after": reply.id}).status_code == 404
    entry_id = next(e["id"] for e in alpha_entries if e["object_id"] == uploaded.id)
    assert beta_admin.get(f"/audit/entries/{entry_id}").status_code == 404
    assert beta_admin.get("/audit/entries", params={"after": entry_id}).status_code == 404
    assert beta_admin.get("/audit/entries", params={"object_id": uploaded.id}).json()["data"] == []

    # Another project's index is an unknown index, and the refusal names only beta's own.
    with pytest.raises(openai.BadRequestError) as foreign:
        chat(beta, index="kb-alpha")
    with pytest.raises(openai.BadRequestError) as unknown:
        chat(beta, index="kb-nothing")
    assert foreign.value.body["message"].replace("kb-alpha", "kb-nothing") == unknown.value.body["message"]
    assert "kb-beta" in unknown.value.body["message"] and "kb-alpha" not in unknown.value.body["message"]
    grounded = chat(beta, index="kb-beta", top_k=1)
    assert grounded.model_extra["sources"]

    # Beta's lists hold only beta's objects.
    assert beta.files.list().data == [] and beta.fine_tuning.jobs.list().data == []
    assert not set(alpha_models) & {m.id for m in beta.models.list().data}
    assert [c["id"] for c in beta_admin.get("/captures").json()["data"]] == [grounded.id, beta_reply.id]
    beta_entries = beta_admin.get("/audit/entries", params={"limit": 1000}).json()["data"]
    assert beta_entries and {e["project"] for e in beta_entries} == {"beta"}
    exported = [json.loads(line) for line in beta_admin.get("/audit/export").text.splitlines()]
    assert [e["seq"] for e in exported] == sorted(e["seq"] for e in beta_entries)
    assert uploaded.id not in beta_admin.get("/audit/export").text

    # Alpha's admin reads alpha's capture, masked as stored, with its feedback.
    alpha_admin = http(url, keys["alpha-admin"])
    captured = alpha_admin.get(f"/captures/{reply.id}").json()
    assert [c["id"] for c in alpha_admin.get("/captures", params={"min_rating": 5}).json()["data"]] == [reply.id]
    assert beta_admin.get("/captures", params={"min_rating": 1}).json()["data"] == []  # beta rated nothing
    assert "jane.doe@example.com" not in json.dumps(captured) and "<EMAIL_ADDRESS>" in json.dumps(captured["request"])
    assert [f["rating"] for f in captured["feedback"]] == [5]

    # Verification says whether the log is intact, and where only to the project whose entry broke.
    assert beta_admin.get("/audit/verify").json() == {"object": "audit.verification", "ok": True,
                                                      "first_broken_seq": None}
    seq = next(e["seq"] for e in alpha_entries if e["object_id"] == uploaded.id)
    with engine_for(db).begin() as connection:
        connection.execute(text("UPDATE audit_log SET actor = 'someone else' WHERE seq = :seq"), {"seq": seq})
    assert beta_admin.get("/audit/verify").json()["first_broken_seq"] is None
    assert beta_admin.get("/audit/verify").json()["ok"] is False
    assert alpha_auditor.get("/audit/verify").json() == {"object": "audit.verification", "ok": False,
                                                         "first_broken_seq": seq}


def test_roles_guard_jobs_captures_and_the_audit_log(served):
    url, keys, _ = served
    uploaded = sdk(url, keys["alpha-dev"]).files.create(
        file=("t.jsonl", io.BytesIO(("\n".join(chat_lines(12)) + "\n").encode())), purpose="fine-tune")
    with pytest.raises(openai.PermissionDeniedError):
        sdk(url, keys["alpha-viewer"]).fine_tuning.jobs.create(model="tiny", training_file=uploaded.id)
    for who in ("alpha-dev", "alpha-viewer"):
        for path in ("/captures", "/audit/entries", "/audit/export", "/audit/verify"):
            refused = http(url, keys[who]).get(path)
            assert refused.status_code == 403 and refused.json()["error"]["code"] == "insufficient_role", path
    assert http(url, keys["alpha-dev"]).get("/captures/chatcmpl-x").status_code == 403
    auditor = http(url, keys["alpha-auditor"])
    uploads = auditor.get("/audit/entries", params={"action": "file.uploaded"}).json()
    assert [e["object_id"] for e in uploads["data"]] == [uploaded.id]
    assert auditor.get("/audit/entries", params={"since": "yesterday"}).status_code == 400
    page = auditor.get("/audit/entries", params={"limit": 1}).json()
    assert page["has_more"] and len(page["data"]) == 1
    rest = auditor.get("/audit/entries", params={"after": page["last_id"]}).json()["data"]
    assert rest and all(e["seq"] < page["data"][0]["seq"] for e in rest)


def test_indexes_belong_to_a_project_in_serve_yaml(tmp_path):
    (tmp_path / "serve.yaml").write_text("indexes:\n  kb: docs.index\n"
                                         "  legal: {path: legal.index, project: legal}\n")
    config = load_serve_config(tmp_path / "serve.yaml")
    assert config.indexes["kb"].path == tmp_path / "docs.index" and config.indexes["kb"].project == "default"
    assert config.indexes["legal"].path == tmp_path / "legal.index"
    assert config.project_indexes("legal") == ["legal"] and config.project_indexes("default") == ["kb"]


def test_capture_cli_reads_one_projects_traffic(tmp_path):
    db = f"sqlite:///{tmp_path / 'hone.db'}"
    store = CaptureStore(db)
    for project in ("alpha", "beta"):
        store.record(response_id=f"r-{project}", model="tiny", project=project, usage={}, response_text="ok",
                     request={"messages": [{"role": "user", "content": f"hello from {project}"}]})
        store.feedback(response_id=f"r-{project}", rating=5, correction=None, project=project)
    stats = CliRunner().invoke(cli, ["capture", "stats", "--project", "alpha", "--db", db, "--json"])
    assert stats.exit_code == 0, stats.output
    figures = json.loads(stats.stdout)
    assert (figures["captured"], figures["with_feedback"], figures["ratings"]) == (1, 1, 1)
    out = tmp_path / "alpha.jsonl"
    exported = CliRunner().invoke(cli, ["capture", "export", str(out), "--project", "alpha", "--db", db])
    assert exported.exit_code == 0, exported.output
    assert [json.loads(line)["messages"][0]["content"] for line in out.read_text().splitlines()] == ["hello from alpha"]


def test_data_prepare_is_filed_in_the_audit_log(tmp_path):
    db = f"sqlite:///{tmp_path / 'hone.db'}"
    rows = [{"messages": [{"role": "user", "content": f"ticket {i}: my parcel {i * 7} never came"},
                          {"role": "assistant", "content": f"Sorry about parcel {i * 7}; a new one ships today."}]}
            for i in range(20)]
    rows.append({"messages": [{"role": "user", "content": "write to jane.doe@example.com please"},
                              {"role": "assistant", "content": "Done."}]})
    (tmp_path / "raw.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    made = CliRunner().invoke(cli, ["data", "prepare", str(tmp_path / "raw.jsonl"), "--out", str(tmp_path / "ds"),
                                    "--project", "alpha", "--db", db, "--json"])
    assert made.exit_code == 0, made.output
    manifest = json.loads(made.stdout)
    [entry] = entries(project="alpha", db_url=db, action="dataset.prepared")
    assert (entry.object_type, entry.object_id) == ("dataset", manifest["dataset_id"])
    assert entry.actor.startswith("cli") and entry.details["out"] == "ds"
    assert str(tmp_path) not in json.dumps(entry.details)
    assert entry.details["pii"]["EMAIL_ADDRESS"] == 1
    assert [step["name"] for step in entry.details["steps"]] == [step["name"] for step in manifest["steps"]]
    assert entry.details["counts"] == manifest["counts"]
