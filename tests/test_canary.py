"""Canary and shadow splits of an alias: the arms' statistics on synthetic captured traffic (a planted regression
is rolled back and audited, equal arms past the window ask for promotion, thin arms say what they need), sticky
routing, and over a real socket with the tiny model: canary users answered by the challenger, shadow copies captured
but never returned."""

from __future__ import annotations

import json
import random
import time
from itertools import count

import httpx
import openai
import pytest
from conftest import serve_app
from sqlalchemy import select
from test_registry_governance import eval_summary, register
from test_serve import make_adapter
from typer.testing import CliRunner

from hone.api.app import create_app
from hone.api.keys import KeyStore
from hone.audit import verify
from hone.audit.log import entries
from hone.cli import app as cli
from hone.errors import ConflictError, NotFoundError, RequestError
from hone.models import fingerprint
from hone.monitor.canary import ActiveSplit, Canaries, Observation, Split, compare_arms, conversation_key
from hone.monitor.capture import CaptureStore, Served
from hone.registry.projects import CanarySettings, Projects
from hone.registry.promotion import Promotions, record_evaluation
from hone.registry.versions import Registry
from hone.serve.config import ServeConfig
from hone.store import engine_for, session
from hone.store.tables import CapturedRequest

ids = count()


@pytest.fixture
def champion(tmp_path):
    """`support@champion` -> v1, and a v2 on the same base, in a SQLite database; replies must be yes or no."""
    db = f"sqlite:///{tmp_path / 'hone.db'}"
    Projects(db).update("default", {"promotion": {"approvals": 0},
                                    "monitor": {"contracts": {"support": {"labels": ["yes", "no"]}}}})
    v1, v2 = register(db, tmp_path, 1), register(db, tmp_path, 2)
    Promotions(db).request("default", "support", 1, "champion", actor="dana")
    return db, v1, v2


def traffic(db: str, version: str, arm: str, n: int, *, valid: float = 0.95, latency: float = 100.0,
            ratings: list[int] | None = None, seed: int = 0) -> None:
    """`n` captured replies of `support@champion` answered by `version` on `arm`: a share `valid` keep the contract,
    latencies around `latency` ms, and the given ratings (one per reply, from the first)."""
    store, rng = CaptureStore(db), random.Random(seed)
    for i in range(n):
        response_id = f"chatcmpl-{next(ids)}"
        store.record(response_id=response_id, model="support@champion", request={"messages": []},
                     response_text="yes" if i < round(n * valid) else "I think so", usage={},
                     served=Served(version=version, alias="champion", arm=arm, finish_reason="stop",
                                   latency_ms=round(rng.gauss(latency, latency * 0.1), 1)))
        if ratings and i < len(ratings):
            store.feedback(response_id=response_id, rating=ratings[i], correction=None)


def test_a_planted_format_regression_is_rolled_back_and_audited(champion):
    db, v1, v2 = champion
    canaries = Canaries(db)
    split = canaries.start("default", "support", "champion", 2, weight=0.2, actor="alice", reason="retrained")
    assert (split.champion_version, split.challenger_version, split.status) == (v1, v2, "active")
    traffic(db, v1, "primary", 60, valid=0.95)
    traffic(db, v2, "canary", 60, valid=0.5, seed=1)

    comparison = canaries.compare("default", split.id)
    validity = next(t for t in comparison.tests if t.metric == "format_validity")
    assert (comparison.champion.format_validity, comparison.challenger.format_validity) == (0.95, 0.5)
    assert validity.status == "worse" and validity.p_value < 0.01 / 3 and validity.alpha == pytest.approx(0.01 / 3)
    assert next(t for t in comparison.tests if t.metric == "latency").status == "held"
    assert next(t for t in comparison.tests if t.metric == "rating").status == "needed"  # nobody rated yet

    decision = canaries.check("default", split.id, actor="worker w1")
    assert decision.action == "rolled_back" and decision.split.status == "rolled_back"
    assert "format validity 50.0% (challenger) vs 95.0% (champion)" in decision.split.outcome["detail"]
    assert Canaries(db).active("default", "support", "champion") is None  # all traffic back to the champion
    assert Promotions(db).resolve_alias("default", "support", "champion") == v1
    rolled = entries(5, "default", db, action="canary.rolled_back")[0]
    assert rolled.actor == "worker w1" and rolled.object_id == split.id
    assert {t["metric"]: t["status"] for t in rolled.details["tests"]}["format_validity"] == "worse"
    assert [e.action for e in entries(10, "default", db) if e.action.startswith("canary.")] == [
        "canary.rolled_back", "canary.started"]
    assert canaries.check("default", split.id, actor="worker w1").action == "holding"  # decided once
    assert verify(db).ok


def test_equal_arms_past_the_window_ask_for_promotion_and_the_policy_decides(champion, tmp_path):
    db, v1, v2 = champion
    Projects(db).update("default", {"promotion": {"approvals": 1}})
    canaries = Canaries(db)
    split = canaries.start("default", "support", "champion", "v2", window_requests=40, actor="alice")
    traffic(db, v1, "primary", 35, seed=2)
    traffic(db, v2, "canary", 30, seed=3)
    early = canaries.check("default", split.id, actor="worker w1")
    assert early.action == "holding" and early.comparison.needed == 10  # 30 of the window's 40
    traffic(db, v2, "canary", 10, seed=4)

    refused = canaries.check("default", split.id, actor="worker w1")  # v2 was never evaluated against v1
    assert refused.action == "passed" and refused.split.status == "passed"
    assert refused.split.outcome["promotion"]["status"] == "refused"
    assert "no evaluation against the current version" in refused.split.outcome["promotion"]["message"]
    assert Promotions(db).resolve_alias("default", "support", "champion") == v1

    with session(Registry(db).engine) as tx:
        record_evaluation(tx, project="default", version_name=v2, against=v1, actor="dana",
                          summary=eval_summary(tmp_path / "vs1", "SHIP"))
    second = canaries.start("default", "support", "champion", 2, window_requests=30, actor="alice")
    traffic(db, v1, "primary", 30, seed=5)
    traffic(db, v2, "canary", 30, seed=6)
    pending = canaries.check("default", second.id, actor="worker w1")
    assert pending.action == "passed" and pending.split.outcome["promotion"]["status"] == "pending"
    request_id = pending.split.outcome["promotion"]["request_id"]
    assert Promotions(db).get_request("default", request_id)["reason"] == f"canary {second.id} passed"
    Promotions(db).reject("default", request_id, actor="bob")

    Projects(db).update("default", {"promotion": {"approvals": 0}})
    offering = canaries.start("default", "support", "champion", 2, window_requests=30, actor="alice")
    traffic(db, v1, "primary", 30, seed=10)
    traffic(db, v2, "canary", 30, seed=11)
    offered = canaries.check("default", offering.id, actor="worker w1")
    assert offered.split.outcome["promotion"]["status"] == "offered"  # approvals 0, but no auto_promote
    assert "hone registry promote support" in offered.split.outcome["promotion"]["message"]

    Projects(db).update("default", {"canary": {"auto_promote": True}})
    third = canaries.start("default", "support", "champion", 2, window_requests=30, actor="alice")
    traffic(db, v1, "primary", 30, seed=7)
    traffic(db, v2, "canary", 30, seed=8)
    runner = CliRunner()
    checked = runner.invoke(cli, ["canary", "check", "--db", db, "--json"])
    assert checked.exit_code == 0, checked.output
    decision = json.loads(checked.output)["decisions"][0]
    assert (decision["id"], decision["action"], decision["status"]) == (third.id, "promoted", "promoted")
    assert Promotions(db).resolve_alias("default", "support", "champion") == v2
    assert entries(5, "default", db, action="canary.promoted")[0].object_id == third.id
    shown = json.loads(runner.invoke(cli, ["canary", "status", "support", "--db", db, "--json"]).output)
    assert [c["status"] for c in shown["canaries"]] == ["promoted", "passed", "passed", "passed"]
    assert verify(db).ok


def test_thin_arms_say_how_many_more_they_need(champion):
    db, v1, v2 = champion
    canaries = Canaries(db)
    split = canaries.start("default", "support", "champion", 2, actor="alice")
    traffic(db, v1, "primary", 25, ratings=[5] * 25)
    traffic(db, v2, "canary", 4, valid=0.0, ratings=[1] * 4)  # every reply invalid, but only 4 of them
    comparison = canaries.compare("default", split.id)
    assert comparison.verdict == "holding" and comparison.needed == 196
    for test in comparison.tests:
        assert test.status == "needed" and test.p_value is None
        assert (test.needed_champion, test.needed_challenger) == (5, 26)
    assert "5 more champion and 26 more challenger" in comparison.tests[0].detail
    assert canaries.check("default", split.id, actor="w").action == "holding"


def test_rating_and_latency_regressions_and_the_latency_tolerance():
    shape = Split(id="canary-x", project="default", model="support", alias="champion", champion_version="a",
                  challenger_version="b", mode="canary", weight=0.1, sticky="user", status="active",
                  window_requests=50, reason=None, actor=None, created_at="", ended_at=None, outcome=None)
    rng = random.Random(9)

    def arm(latency: float, ratings: list[int]) -> list[Observation]:
        return [Observation("yes", rng.gauss(latency, 10), r) for r in ratings]

    settings = CanarySettings()
    stars = [5, 4, 5, 4, 3] * 12
    worse = compare_arms(shape, arm(100, stars), arm(150, [2, 3, 1, 3, 2] * 12), None, settings)
    assert {t.metric: t.status for t in worse.tests} == {"format_validity": "not_applicable", "rating": "worse",
                                                        "latency": "worse"}
    assert worse.verdict == "worse"
    tolerated = compare_arms(shape, arm(100, stars), arm(110, stars), None, settings)  # 10% slower: within 20%
    assert {t.metric: t.status for t in tolerated.tests}["latency"] == "held" and tolerated.verdict == "passed"


def test_sticky_routing_keeps_users_and_conversations_on_one_arm():
    split = ActiveSplit("canary-1", "v1", "v2", "canary", 0.1, "user")
    arms = {f"user-{i}": split.challenger_takes(f"user-{i}") for i in range(2000)}
    assert all(split.challenger_takes(user) == arm for user, arm in list(arms.items())[:200])
    assert sum(arms.values()) / 2000 == pytest.approx(0.1, abs=0.02)
    other = ActiveSplit("canary-2", "v1", "v2", "canary", 0.1, "user")  # another split draws another 10%
    assert {u for u, a in arms.items() if a} != {u for u in arms if other.challenger_takes(u)}

    opening = [{"role": "system", "content": "You answer support tickets."}, {"role": "user", "content": "Refund?"}]
    later = opening + [{"role": "assistant", "content": "Which order?"}, {"role": "user", "content": "#12"}]
    assert conversation_key(opening) == conversation_key(later)
    assert conversation_key(opening) != conversation_key([opening[0], {"role": "user", "content": "Invoice?"}])
    per_request = ActiveSplit("canary-3", "v1", "v2", "canary", 0.3, "request")
    share = sum(per_request.challenger_takes("same-user") for _ in range(2000)) / 2000
    assert share == pytest.approx(0.3, abs=0.05)


def test_splits_refuse_what_cannot_be_compared(champion, tmp_path):
    db, v1, v2 = champion
    canaries = Canaries(db)
    with pytest.raises(NotFoundError):
        canaries.start("default", "support", "staging", 2, actor="alice")  # no such alias
    with pytest.raises(ConflictError) as same:
        canaries.start("default", "support", "champion", 1, actor="alice")
    assert same.value.code == "challenger_is_champion"
    register(db, tmp_path, 3, base_fingerprint="e" * 64, base="other-base")
    with pytest.raises(ConflictError) as other_base:
        canaries.start("default", "support", "champion", 3, actor="alice")
    assert other_base.value.code == "other_base"
    with pytest.raises(RequestError):
        canaries.start("default", "support", "champion", 2, window_requests=10, actor="alice")  # < min_samples
    split = canaries.start("default", "support", "champion", 2, actor="alice")
    with pytest.raises(ConflictError) as twice:
        canaries.start("default", "support", "champion", 2, mode="shadow", weight=1.0, actor="alice")
    assert twice.value.code == "split_exists"
    with pytest.raises(NotFoundError):
        canaries.get("other", split.id)
    assert canaries.stop("default", split.id, actor="alice").status == "ended"
    with pytest.raises(ConflictError):
        canaries.stop("default", split.id, actor="alice")
    assert entries(5, "default", db, action="canary.stopped")


@pytest.fixture
def served(tiny_model_dir, tmp_path):
    """A server on the tiny base with `support@champion` -> v1 and v2 on the same base (real adapters)."""
    db = f"sqlite:///{tmp_path / 'hone.db'}"
    base_fingerprint = fingerprint(str(tiny_model_dir))
    names = []
    for number in (1, 2):
        make_adapter(tmp_path / f"v{number}", str(tiny_model_dir), number)
        names.append(register(db, tmp_path, number, author="builder", base=str(tiny_model_dir),
                              base_fingerprint=base_fingerprint))
    Projects(db).update("default", {"promotion": {"approvals": 0}})
    Promotions(db).request("default", "support", 1, "champion", actor="builder")
    store = KeyStore(db)
    keys = {"viewer": store.create("reader", role="viewer"), "developer": store.create("builder"),
            "approver": store.create("alice", role="approver"), "rival": store.create("rival", project="other",
                                                                                     role="admin")}
    app = create_app(ServeConfig(base=str(tiny_model_dir), base_id="tiny", dtype="fp32", threads=1, database=db,
                                 jobs={"worker": False}))
    app.state.server.canaries.active_ttl_s = 0.2  # a stop applies within 0.2 s here (2 s by default)
    with serve_app(app) as url:
        yield url, keys, names, db


def test_canary_and_shadow_over_a_real_socket(served):
    url, keys, (v1, v2), db = served

    def call(who: str, method: str, path: str, **body) -> httpx.Response:
        return httpx.request(method, f"{url}{path}", json=body or None, timeout=30,
                             headers={"Authorization": f"Bearer {keys[who]}"})

    def ask(model: str, user: str | None = None):
        client = openai.OpenAI(base_url=url, api_key=keys["developer"], max_retries=0)
        return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=4, temperature=0, **({"user": user} if user else {}))

    def captured() -> list[CapturedRequest]:
        with session(engine_for(db)) as tx:
            rows = tx.scalars(select(CapturedRequest).order_by(CapturedRequest.id)).all()
            tx.expunge_all()
            return rows

    champion_text, challenger_text = ask(v1).choices[0].message.content, ask(v2).choices[0].message.content
    assert champion_text != challenger_text
    body = {"model": "support", "challenger": "2", "weight": 0.5, "sticky": "user", "window_requests": 100}
    assert call("developer", "POST", "/monitor/canaries", **body).status_code == 403  # approvers only
    for bad in ({"weight": 0}, {"weight": 2}, {"mode": "mirror"}, {"surprise": 1}):
        refused = call("approver", "POST", "/monitor/canaries", **(body | bad))
        assert refused.status_code == 400, (bad, refused.text)
    assert call("rival", "POST", "/monitor/canaries", **body).status_code == 404  # no support model there
    started = call("approver", "POST", "/monitor/canaries", **body)
    assert started.status_code == 200, started.text
    split = started.json()["id"]

    users = [f"user-{i}" for i in range(8)] * 2
    replies = {user: ask("support@champion", user).choices[0].message.content for user in users}
    rows = [r for r in captured() if r.model == "support@champion"]  # the two calls by version name are captured too
    assert len(rows) == 16 and {r.alias for r in rows} == {"champion"}
    arms = {}
    for row in rows:
        user = json.loads(row.request_json)["user"]
        assert arms.setdefault(user, row.arm) == row.arm  # each user stays on one arm
        assert row.served_version == (v2 if row.arm == "canary" else v1)
        assert replies[user] == (challenger_text if row.arm == "canary" else champion_text)
    assert set(arms.values()) == {"primary", "canary"}

    shown = call("viewer", "GET", f"/monitor/canaries/{split}").json()
    assert shown["comparison"]["champion"]["requests"] + shown["comparison"]["challenger"]["requests"] == 16
    assert shown["comparison"]["tests"][1]["status"] == "needed"  # 16 requests: too few for any test
    assert call("rival", "GET", f"/monitor/canaries/{split}").status_code == 404
    assert call("rival", "POST", f"/monitor/canaries/{split}/stop").status_code == 404
    assert call("viewer", "GET", "/monitor/canaries").json()["data"][0]["id"] == split
    assert call("developer", "POST", f"/monitor/canaries/{split}/check").status_code == 403
    assert call("rival", "POST", f"/monitor/canaries/{split}/check").status_code == 404
    assert call("approver", "POST", f"/monitor/canaries/{split}/check").json()["action"] == "holding"
    assert call("approver", "POST", f"/monitor/canaries/{split}/stop").json()["status"] == "ended"
    time.sleep(0.3)
    assert ask("support@champion", "user-0").choices[0].message.content == champion_text

    shadow = call("approver", "POST", "/monitor/canaries", model="support", challenger="2", mode="shadow",
                  weight=1.0, sticky="request")
    assert shadow.status_code == 200, shadow.text
    time.sleep(0.3)  # the server's cached "no split" expires
    answer = ask("support@champion", "user-9")
    assert answer.choices[0].message.content == champion_text  # the champion answers; the copy is never returned
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(r.response_id == f"{answer.id}-shadow" for r in captured()):
        time.sleep(0.1)
    copies = {r.response_id: r for r in captured() if r.response_id.startswith(answer.id)}
    assert (copies[answer.id].arm, copies[answer.id].served_version) == ("primary", v1)
    shadowed = copies[f"{answer.id}-shadow"]
    assert (shadowed.arm, shadowed.served_version, shadowed.response_text) == ("shadow", v2, challenger_text)
    assert verify(db).ok
