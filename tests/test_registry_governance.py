"""Aliases with history, promotion gated by the project's policy and by approvers who did not train the version,
rollback, and `MODEL@ALIAS` served without a restart: through the Python API on SQLite and PostgreSQL, and over a
real socket with the openai SDK and plain HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest
from conftest import serve_app
from store_fixtures import db_url  # noqa: F401  (fixture: SQLite and PostgreSQL)
from test_serve import make_adapter
from typer.testing import CliRunner

from hone.api.app import create_app
from hone.api.keys import KeyStore
from hone.audit import verify
from hone.audit.log import entries
from hone.cli import app as cli
from hone.errors import ConflictError, ForbiddenError, NotFoundError, RequestError
from hone.models import fingerprint
from hone.registry.projects import Projects
from hone.registry.promotion import Promotions, record_evaluation
from hone.registry.versions import Registry
from hone.serve.config import ServeConfig
from hone.store import session

FORGETTING_OK = {"metric": "answer_match", "tolerance": 5.0, "perplexity_tolerance_pct": 25.0,
                 "changes": {"fine-tuned": {"answer_match": {"delta": -1.0}, "text_perplexity_rise_pct": 3.0}}}


def eval_summary(folder: Path, verdict: str, *, forgetting: dict | None = FORGETTING_OK, slices: dict | None = None,
                 memorization: dict | None = None) -> dict:
    """An evaluation summary as the job's default eval writes it, with its full report on disk."""
    folder.mkdir(parents=True, exist_ok=True)
    report = {"verdict": {"decision": verdict, "candidate": "fine-tuned"}, "forgetting": forgetting,
              "slices": slices, "memorization": memorization}
    (folder / "report.json").write_text(json.dumps(report))
    return {"verdict": verdict, "reasons": [f"primary metric says {verdict}"],
            "report_json": str(folder / "report.json")}


def register(db: str, folder: Path, number: int, verdict: str = "SHIP", author: str = "dana", base: str = "tiny",
             base_fingerprint: str = "f" * 64, **report) -> str:
    """Register version `number` of model `support` in project `default`, trained by `author`."""
    name = f"ft:tiny:default:support:job{number:05d}"
    with session(Registry(db).engine) as tx:
        Registry(db).register(tx, project="default", name=name, base_model=base, base_fingerprint=base_fingerprint,
                              job_id=None, training_file_sha256=None, dataset_id=None, config={"method": "lora"},
                              metrics={}, run_dir=folder / f"v{number}", weights_dir=folder / f"v{number}" / "adapter",
                              eval_report=eval_summary(folder / f"eval{number}", verdict, **report), verdict=verdict,
                              actor="worker w1", model="support", author=author)
    return name


def test_promotion_needs_a_passing_policy_and_an_approver_who_is_not_the_author(db_url, tmp_path):  # noqa: F811
    promotions = Promotions(db_url)
    regressed = register(db_url, tmp_path, 1, verdict="REGRESSION")
    with pytest.raises(ConflictError) as refused:
        promotions.request("default", "support", 1, "champion", actor="dana")
    assert "promotion of support version 1 to champion refused" in refused.value.message
    assert "says REGRESSION" in refused.value.message
    assert promotions.requests("default", status="refused")[0]["version"] == regressed
    assert entries(5, "default", db_url, action="promotion.refused")  # the refusal itself is audited

    good = register(db_url, tmp_path, 2)
    pending = promotions.request("default", "support", "v2", "champion", actor="dana", reason="better answers")
    assert pending["status"] == "pending" and [c["rule"] for c in pending["checks"]] == ["verdict", "forgetting"]
    assert all(c["passed"] for c in pending["checks"])
    with pytest.raises(NotFoundError):
        promotions.resolve_alias("default", "support", "champion")  # nothing moves before the approval

    with pytest.raises(ForbiddenError) as own:
        promotions.approve("default", pending["id"], actor="dana", comment="looks good to me")
    assert own.value.code == "author_cannot_approve" and "dana created the job" in own.value.message
    assert entries(5, "default", db_url, action="promotion.approve_refused")
    with pytest.raises(NotFoundError):  # another project's request does not exist for it
        promotions.approve("other", pending["id"], actor="erin")

    done = promotions.approve("default", pending["id"], actor="alice", comment="checked 20 replies")
    assert done["status"] == "promoted" and done["approvals"][0]["actor"] == "alice"
    assert promotions.resolve_alias("default", "support", "champion") == good
    shown = Registry(db_url).show(good, "default")
    assert shown["aliases"] == ["champion"] and shown["version"] == 2 and shown["author"] == "dana"
    assert shown["approvals"][0]["comment"] == "checked 20 replies"
    with pytest.raises(ConflictError):
        promotions.approve("default", pending["id"], actor="bob")  # closed
    assert verify(db_url).ok


def test_a_challenger_needs_ship_against_the_champion_and_rollback_restores_it(db_url, tmp_path):  # noqa: F811
    promotions = Promotions(db_url)
    Projects(db_url).update("default", {"promotion": {"approvals": 0}}, actor="admin")
    first = register(db_url, tmp_path, 1)
    promotions.request("default", "support", 1, "champion", actor="dana")
    second = register(db_url, tmp_path, 2)
    with pytest.raises(ConflictError) as no_eval:  # SHIP against the base is not SHIP against the champion
        promotions.request("default", "support", 2, "champion", actor="dana")
    assert f"no evaluation against the current version {first}" in no_eval.value.message
    assert "hone registry evaluate support 2 --against" in no_eval.value.message

    with session(Registry(db_url).engine) as tx:
        record_evaluation(tx, project="default", version_name=second, against=first, actor="dana",
                          summary=eval_summary(tmp_path / "vs1", "SHIP"))
    assert promotions.request("default", "support", 2, "champion", actor="dana")["status"] == "promoted"
    assert promotions.resolve_alias("default", "support", "champion") == second

    moved = promotions.rollback("default", "support", "champion", actor="alice", reason="complaints")
    assert (moved["from_version"], moved["to_version"], moved["action"]) == (second, first, "rollback")
    assert promotions.resolve_alias("default", "support", "champion") == first
    history = promotions.history("default", "support", "champion")
    assert [(m["action"], m["from_version"], m["to_version"]) for m in history] == [
        ("promote", None, first), ("promote", first, second), ("rollback", second, first)]
    assert history[2]["actor"] == "alice" and history[2]["reason"] == "complaints"
    register(db_url, tmp_path, 3)
    with pytest.raises(ConflictError):  # a version the alias never held needs a promotion
        promotions.rollback("default", "support", "champion", actor="alice", to_version=3)
    assert [e.action for e in entries(20, "default", db_url) if e.action.startswith("alias.")] == [
        "alias.rollback", "alias.moved", "alias.moved"]
    assert verify(db_url).ok


def test_policy_caps_approvals_exempt_aliases_and_a_moved_alias(tmp_path):
    db = f"sqlite:///{tmp_path / 'hone.db'}"
    promotions = Promotions(db)
    Projects(db).update("default", {"promotion": {"approvals": 2, "max_slice_gap": 10, "max_memorization_rate": 5,
                                                  "exempt_aliases": ["staging"]}})
    gap = {"max_gap": {"fine-tuned": {"gap": 18.0, "field": "region", "low": "EU", "high": "US"}}}
    memorized = {"candidates": {"fine-tuned": {"rate": 2.0}}, "canaries": {"leaked": {}}}
    register(db, tmp_path, 1, slices=gap, memorization=memorized)
    with pytest.raises(ConflictError) as too_wide:
        promotions.request("default", "support", 1, "champion", actor="dana")
    assert "largest slice gap 18.0 points (region: EU vs US), cap 10" in too_wide.value.message
    assert promotions.request("default", "support", 1, "staging", actor="dana")["status"] == "promoted"

    fair = {"max_gap": {"fine-tuned": {"gap": 4.0, "field": "region", "low": "EU", "high": "US"}}}
    register(db, tmp_path, 2, slices=fair, memorization={"candidates": {"fine-tuned": {"rate": 9.5}}})
    with pytest.raises(ConflictError) as memorizes:
        promotions.request("default", "support", 2, "champion", actor="dana")
    assert "9.5% of replies repeat the training data verbatim (cap 5%)" in memorizes.value.message

    third = register(db, tmp_path, 3, slices=fair, memorization=memorized)
    request = promotions.request("default", "support", 3, "champion", actor="dana")
    assert promotions.approve("default", request["id"], actor="alice")["status"] == "pending"  # 1 of 2
    with pytest.raises(ConflictError):
        promotions.approve("default", request["id"], actor="alice")  # the same approver counts once
    assert promotions.approve("default", request["id"], actor="bob")["status"] == "promoted"
    assert promotions.resolve_alias("default", "support", "champion") == third

    fourth = register(db, tmp_path, 4, slices=fair, memorization=memorized)
    with session(Registry(db).engine) as tx:
        record_evaluation(tx, project="default", version_name=fourth, against=third, actor="dana",
                          summary=eval_summary(tmp_path / "vs3", "SHIP", slices=fair, memorization=memorized))
    stale = promotions.request("default", "support", 4, "champion", actor="dana")
    Projects(db).update("default", {"promotion": {"exempt_aliases": ["staging", "champion"]}})
    promotions.request("default", "support", 2, "champion", actor="dana")  # exempt: moves at once
    Projects(db).update("default", {"promotion": {"exempt_aliases": ["staging"]}})
    promotions.approve("default", stale["id"], actor="alice")
    closed = promotions.approve("default", stale["id"], actor="bob")
    assert closed["status"] == "refused"  # the champion it was measured against is gone
    assert promotions.resolve_alias("default", "support", "champion").endswith("job00002")


def test_bad_aliases_and_versions_are_refused_clearly(tmp_path):
    db = f"sqlite:///{tmp_path / 'hone.db'}"
    register(db, tmp_path, 1)
    promotions = Promotions(db)
    for alias in ("../x", "a b", "", "x" * 65, "@champion"):
        with pytest.raises(RequestError) as bad:
            promotions.request("default", "support", 1, alias, actor="dana")
        assert bad.value.code == "invalid_alias"
    with pytest.raises(NotFoundError):
        promotions.request("default", "support", 7, "champion", actor="dana")
    with pytest.raises(NotFoundError):
        promotions.request("other", "support", 1, "champion", actor="dana")  # another project's model


@pytest.fixture
def governed(tiny_model_dir, tmp_path, db_url):  # noqa: F811
    """A server on the tiny base with two registered versions of `support` (real adapters), keys of two projects,
    on SQLite and on PostgreSQL."""
    db = db_url
    base_fingerprint = fingerprint(str(tiny_model_dir))
    names = []
    for number, seed in ((1, 1), (2, 2)):
        make_adapter(tmp_path / f"v{number}", str(tiny_model_dir), seed)
        names.append(register(db, tmp_path, number, author="builder", base=str(tiny_model_dir),
                              base_fingerprint=base_fingerprint))
    store = KeyStore(db)
    keys = {"viewer": store.create("reader", role="viewer"), "developer": store.create("builder"),
            "approver": store.create("alice", role="approver"), "admin": store.create("operator", role="admin"),
            "rival": store.create("rival", project="other", role="admin")}
    config = ServeConfig(base=str(tiny_model_dir), base_id="tiny", dtype="fp32", threads=1, database=db,
                         jobs={"worker": False})
    with serve_app(create_app(config)) as url:
        yield url, keys, names, db


def test_promotion_over_http_and_model_at_alias_follows_without_restart(governed, tmp_path):
    url, keys, (v1, v2), db = governed

    def call(who: str, method: str, path: str, **body) -> httpx.Response:
        return httpx.request(method, f"{url}{path}", json=body or None, timeout=30,
                             headers={"Authorization": f"Bearer {keys[who]}"})

    def reply(model: str, who: str = "developer") -> str:
        client = openai.OpenAI(base_url=url, api_key=keys[who], max_retries=0)
        return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=6, temperature=0).choices[0].message.content

    bad = call("developer", "POST", "/registry/models/support/promotions", version="1", alias="../champion")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_alias"
    extra = call("developer", "POST", "/registry/models/support/promotions", version="1", alias="x", force=True)
    assert extra.status_code == 400  # unknown fields are refused, not ignored
    assert call("rival", "POST", "/registry/models/support/promotions", version="1",
                alias="champion").status_code == 404
    assert call("rival", "GET", "/registry/models/support/versions/1").status_code == 404
    assert call("viewer", "GET", "/registry/models/support/versions/1").json()["name"] == v1
    assert call("viewer", "GET", "/registry/models/support/versions/9").status_code == 404
    viewer = call("viewer", "POST", "/registry/models/support/promotions", version="1", alias="champion")
    assert viewer.status_code == 403 and viewer.json()["error"]["code"] == "insufficient_role"
    request = call("developer", "POST", "/registry/models/support/promotions", version="1", alias="champion")
    assert request.status_code == 200 and request.json()["status"] == "pending"
    promo = request.json()["id"]
    own = call("developer", "POST", f"/registry/promotions/{promo}/approve", comment="mine")
    assert own.status_code == 403  # a developer may not approve at all
    assert call("rival", "POST", f"/registry/promotions/{promo}/approve").status_code == 404
    assert call("rival", "GET", f"/registry/promotions/{promo}").status_code == 404
    assert call("rival", "GET", "/registry/models").json()["data"] == []
    with pytest.raises(openai.NotFoundError):
        reply("support@champion")  # not promoted yet

    approved = call("approver", "POST", f"/registry/promotions/{promo}/approve", comment="ok")
    assert approved.json()["status"] == "promoted"
    assert reply("support@champion") == reply(v1)
    with pytest.raises(openai.NotFoundError):
        reply("support@champion", who="rival")  # the alias of another project does not exist for it

    with session(Registry(db).engine) as tx:
        record_evaluation(tx, project="default", version_name=v2, against=v1, actor="builder",
                          summary=eval_summary(tmp_path / "vs1", "SHIP"))
    second = call("developer", "POST", "/registry/models/support/promotions", version="2", alias="champion")
    call("approver", "POST", f"/registry/promotions/{second.json()['id']}/approve")
    assert reply("support@champion") == reply(v2) != reply(v1)  # the same server follows the alias

    assert call("developer", "POST", "/registry/models/support/aliases/champion/rollback").status_code == 403
    assert call("rival", "POST", "/registry/models/support/aliases/champion/rollback").status_code == 404
    rolled = call("approver", "POST", "/registry/models/support/aliases/champion/rollback", reason="complaints")
    assert rolled.status_code == 200 and rolled.json()["to_version"] == v1
    assert reply("support@champion") == reply(v1)
    staged = call("developer", "POST", "/registry/models/support/promotions", version="2", alias="staging").json()
    assert call("developer", "POST", f"/registry/promotions/{staged['id']}/reject").status_code == 403
    rejected = call("approver", "POST", f"/registry/promotions/{staged['id']}/reject", comment="not yet")
    assert rejected.json()["status"] == "rejected" and rejected.json()["approvals"][0]["comment"] == "not yet"
    assert [p["id"] for p in call("viewer", "GET", "/registry/promotions?status=rejected").json()["data"]] == [
        staged["id"]]
    assert call("rival", "GET", "/registry/promotions").json()["data"] == []
    assert call("viewer", "GET", "/registry/models/support/aliases").json()["data"][0]["version"] == v1
    assert call("rival", "GET", "/registry/models/support/history").json()["data"] == []
    history = call("viewer", "GET", "/registry/models/support/history?alias=champion").json()["data"]
    assert [m["action"] for m in history] == ["promote", "promote", "rollback"]
    versions = {v["version"]: v for v in call("viewer", "GET", "/registry/models?model=support").json()["data"]}
    assert versions[1]["aliases"] == ["champion"] and versions[2]["aliases"] == []

    assert call("developer", "PATCH", "/projects/current", promotion={"approvals": 0}).status_code == 403
    changed = call("admin", "PATCH", "/projects/current", intended_purpose="Answer support tickets",
                   promotion={"approvals": 2})
    assert changed.json()["settings"]["promotion"]["approvals"] == 2
    bad = call("admin", "PATCH", "/projects/current", promotion={"approvals": -1})
    assert bad.status_code == 400 and "promotion.approvals" in bad.json()["error"]["message"]
    assert call("rival", "GET", "/projects/current").json()["settings"]["intended_purpose"] is None


def test_cli_promote_approve_history_and_projects(tmp_path, monkeypatch):
    db = f"sqlite:///{tmp_path / 'hone.db'}"
    register(db, tmp_path, 1, author="cli someone-else")
    runner = CliRunner()

    def run(*args: str) -> dict:
        result = runner.invoke(cli, [*args, "--db", db, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    settings = run("projects", "set", "default", "intended_purpose=Answer support tickets", "promotion.approvals=1")
    assert settings["settings"]["intended_purpose"] == "Answer support tickets"
    request = run("registry", "promote", "support", "1", "--alias", "champion", "--reason", "first")
    assert request["status"] == "pending"
    assert run("registry", "approve", request["id"], "--comment", "fine")["status"] == "promoted"
    history = run("registry", "history", "support")
    assert history["aliases"][0]["alias"] == "champion" and history["history"][0]["reason"] == "first"
    listed = {p["name"]: p for p in run("projects", "list")["projects"]}
    assert listed["default"]["models"] == 1
    refused = runner.invoke(cli, ["projects", "set", "default", "promotion.approvals=many", "--db", db])
    assert refused.exit_code != 0 and "promotion.approvals" in str(refused.exception)


def test_registry_evaluate_compares_a_challenger_with_the_champion_and_the_policy_reads_it(tiny_model_dir, tmp_path):
    from jobs_helpers import chat_lines, write_lines

    from hone.registry.evaluate import evaluate_against

    db = f"sqlite:///{tmp_path / 'hone.db'}"
    Projects(db).update("default", {"promotion": {"approvals": 0}})
    for number, seed in ((1, 1), (2, 2)):
        make_adapter(tmp_path / f"v{number}", str(tiny_model_dir), seed)
        register(db, tmp_path, number, base=str(tiny_model_dir))
    promotions = Promotions(db)
    promotions.request("default", "support", 1, "champion", actor="dana")
    test_file = write_lines(tmp_path / "test.jsonl", chat_lines(6))

    summary = evaluate_against("default", "support", 2, "champion", data=test_file, out=tmp_path / "vs-champion",
                               db_url=db, max_examples=4, probe_limit=0, actor="dana")
    assert (summary["baseline"], summary["candidate"], summary["examples"]) == ("v1", "v2", 4)
    assert Path(summary["report_html"]).is_file()
    shown = Registry(db).show(promotions.resolve_alias("default", "support", "champion"), "default")
    assert shown["version"] == 1
    challenger = Registry(db).show(Registry(db).resolve("default", "support", 2), "default")
    against = [e for e in challenger["evaluations"] if e["against_version"] == shown["name"]]
    assert against and against[0]["verdict"] == summary["verdict"]
    # the policy reads this very verdict: refused with it, or (SHIP, approvals 0) promoted on it
    if summary["verdict"] != "SHIP":
        with pytest.raises(ConflictError) as refused:
            promotions.request("default", "support", 2, "champion", actor="dana")
        assert f"against the current version {shown['name']} says {summary['verdict']}" in refused.value.message
    else:
        assert promotions.request("default", "support", 2, "champion", actor="dana")["status"] == "promoted"
