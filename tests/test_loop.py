"""The retraining loop on the tiny model: triggers fire once per cause into a curated dataset and a real job, a
retrain in progress blocks the next, too little data says so, the periodic checks run on one worker at a time, a
failed retrain shows in the status while the champion keeps serving, and the challenger is evaluated before any
canary."""

from __future__ import annotations

import json
import random
import threading
from datetime import timedelta

import pytest
from jobs_helpers import FAST, write_lines
from sqlalchemy import select

from hone.audit import entries, verify
from hone.jobs.service import JobService, job_dir
from hone.jobs.spec import JobRequest
from hone.jobs.worker import Worker, WorkerSettings
from hone.monitor import loop
from hone.monitor.capture import CaptureStore, Served
from hone.registry.projects import Projects
from hone.registry.promotion import Promotions
from hone.store import engine_for, session
from hone.store.tables import AliasSplit, Feedback, LoopFiring, PeriodicLease, VersionEvaluation, utc_now

WORDS = ("refund order parcel invoice account password delivery courier warranty receipt discount coupon address "
         "billing shipment tracking return exchange voucher payment balance subscription upgrade cancel renewal "
         "storage battery charger screen keyboard laptop printer router cable adapter speaker camera lens tripod "
         "blender kettle toaster mixer vacuum heater fan lamp desk chair sofa pillow blanket towel mirror").split()
ACTOR = "test"


def ticket(seed: int) -> str:
    """A support question of 16 words no other seed repeats (near-dedup keeps them apart)."""
    return "please help with my " + " ".join(random.Random(seed).sample(WORDS, 12)) + " today"


def chat(seed: int, answer: str = "ok") -> str:
    return json.dumps({"messages": [{"role": "user", "content": ticket(seed)},
                                    {"role": "assistant", "content": answer}]})


@pytest.fixture
def service(tiny_model_dir):
    return JobService(bases={"tiny": str(tiny_model_dir)})


def run_worker() -> None:
    Worker(settings=WorkerSettings(poll_s=0.1, idle_poll_s=0.1, loop_interval_s=3600)).run(max_jobs=1)


def train_champion(service: JobService, tmp_path, held_out: bool = False) -> str:
    """support v1, trained on 40 tickets (10 held out as its eval set when `held_out`), as support@champion."""
    path = write_lines(tmp_path / "champion.jsonl", [chat(i, f"ticket {i} answered") for i in range(40)])
    with open(path, "rb") as handle:
        stored = service.files.upload("default", handle, "champion.jsonl", "fine-tune")
    hone = {**FAST, "eval": {"enabled": True, "max_examples": 2, "probe_limit": 0}} if held_out else FAST
    job = service.create("default", JobRequest(model="tiny", training_file=stored.id, suffix="support", seed=3,
                                               hone=hone, method={"type": "supervised", "supervised": {
                                                   "hyperparameters": {"n_epochs": 1, "batch_size": 4}}}))
    run_worker()
    done = service.get("default", job["id"])
    assert done["status"] == "succeeded", done["error"]
    Projects().update("default", {"promotion": {"exempt_aliases": ["champion"]}}, actor=ACTOR)
    Promotions().request("default", "support", 1, "champion", actor=ACTOR)
    return done["fine_tuned_model"]


def capture(champion: str, seeds, corrected=(), prompt=None) -> None:
    """Exchanges of support@champion answered by the champion; `corrected` seeds get a corrected answer."""
    store = CaptureStore()
    for seed in seeds:
        response_id = f"chatcmpl-{seed}-{random.random()}"
        content = prompt(seed) if prompt else ticket(1000 + seed)
        store.record(response_id=response_id, model="support@champion", project="default",
                     request={"model": "support@champion", "messages": [{"role": "user", "content": content}]},
                     response_text="no idea", usage={"prompt_tokens": 9, "completion_tokens": 2},
                     served=Served(version=champion, alias="champion", arm="primary"))
        if seed in corrected:
            store.feedback(response_id=response_id, rating=2, correction=f"the answer to ticket {seed}")


def enable_loop(**settings) -> None:
    Projects().update("default", {"loop": {"enabled": True, **settings}}, actor=ACTOR)


def firings() -> list[LoopFiring]:
    with session(engine_for(None)) as db:
        return db.scalars(select(LoopFiring).order_by(LoopFiring.created_at)).all()


def test_corrections_fire_once_into_a_curated_dataset_and_a_job_that_blocks_the_next(service, tmp_path):
    champion = train_champion(service, tmp_path, held_out=True)
    eval_set = job_dir(_champion_job(champion)) / "heldout.jsonl"
    protected = [json.loads(line)["messages"][0]["content"] for line in eval_set.read_text().splitlines()]
    # 30 exchanges: 2 exact duplicates, 1 that repeats a question of the eval set, 6 corrected
    capture(champion, range(27), corrected=range(6))
    capture(champion, [100, 101], prompt=lambda seed: ticket(1010))  # as seed 10 asked, same answer
    capture(champion, [200], prompt=lambda seed: protected[0])
    enable_loop(triggers={"corrections": 5}, min_examples=10)

    (fired,) = loop.check_triggers("default", "support", actor=ACTOR)
    assert loop.check_triggers("default", "support", actor=ACTOR) == []  # the same cause does not fire again
    assert fired.status == "training", fired.error
    with session(engine_for(None)) as db:  # the cause is the 5th correction: the one that reached the threshold
        fifth = db.scalars(select(Feedback.id).where(Feedback.correction.is_not(None)).order_by(Feedback.id)).all()[4]
    assert (fired.trigger, fired.cause, fired.figure, fired.threshold) == ("corrections", f"correction:{fifth}", 6, 5)
    assert len(firings()) == 1

    details = json.loads(firings()[0].details_json)
    manifest = json.loads((tmp_path / "hone-home" / "loop" / "default" / "support" / fired.id / "dataset" /
                           "manifest.json").read_text())
    removed = {step["name"]: step["removed"] for step in manifest["steps"]}
    assert removed["exact_dedup"] == 2 and removed["decontaminate"] == 1
    assert manifest["config"]["decontaminate"]["against"] == [str(eval_set)]
    assert manifest["counts"]["ingested"] == 30 and details["examples"] == manifest["counts"]["train"]
    assert fired.dataset_id == manifest["dataset_id"]

    job = service.get("default", fired.job_id)
    original = service.get("default", _champion_job(champion))
    assert job["status"] == "queued" and job["user_provided_suffix"] == "support"
    assert job["method"] == original["method"] and job["hone"]["eval"] == original["hone"]["eval"]
    assert job["metadata"][loop.LOOP_JOB_TAG] == fired.id

    # a retrain in progress blocks the next cause: recorded once as skipped, no second job
    capture(champion, range(300, 306), corrected=range(300, 306))
    (skipped,) = loop.check_triggers("default", "support", actor=ACTOR)
    assert skipped.status == "skipped" and fired.job_id in json.loads(firings()[1].details_json)["skipped"]
    assert loop.check_triggers("default", "support", actor=ACTOR) == []
    assert len(service.list("default").data) == 2  # the champion's job and one retrain

    fired_entry = entries(project="default", action="loop.fired")[0]
    assert fired_entry.details["figure"] == 6 and fired_entry.details["threshold"] == 5
    assert fired_entry.details["job_id"] == fired.job_id
    assert verify().ok


def _champion_job(champion: str) -> str:
    from hone.registry.versions import Registry

    return Registry().show(champion, "default")["job_id"]


def test_two_workers_at_the_same_moment_run_the_checks_once():
    enable_loop()
    now = utc_now()
    start = threading.Barrier(2)
    runs = {}

    def check(name: str) -> None:
        start.wait()
        runs[name] = loop.run_periodic(None, name, now)

    threads = [threading.Thread(target=check, args=(name,)) for name in ("worker-a", "worker-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(run.ran for run in runs.values()) == [False, True]
    assert loop.run_periodic(None, "worker-c", now + timedelta(seconds=30)).reason == "not due yet"
    assert loop.run_periodic(None, "worker-c", now + timedelta(seconds=61)).ran
    with session(engine_for(None)) as db:  # a worker that died holding the checks keeps them until the lease ends
        db.get(PeriodicLease, loop.LEASE_NAME).holder = "dead"
        db.get(PeriodicLease, loop.LEASE_NAME).expires_at = utc_now() + timedelta(seconds=60)
    refused = loop.run_periodic(None, "worker-d", force=True)
    assert not refused.ran and refused.reason == "dead is running the checks"


def test_too_few_examples_then_a_failed_retrain_shows_its_error_while_the_champion_keeps_serving(service, tmp_path):
    champion = train_champion(service, tmp_path)
    capture(champion, range(8), corrected=range(4))
    enable_loop(triggers={"corrections": 4}, min_examples=20)
    (too_few,) = loop.check_triggers("default", "support", actor=ACTOR)
    assert too_few.status == "too_few" and too_few.job_id is None
    assert "8 captured exchange(s)" in too_few.error and "at least 20" in too_few.error
    assert entries(project="default", action="loop.too_few")[0].details["trigger"] == "corrections"
    assert len(service.list("default").data) == 1

    capture(champion, range(8, 12), corrected=range(8, 12))  # 4 more corrections: a new cause
    enable_loop(min_examples=5)
    worker = Worker(settings=WorkerSettings(poll_s=0.1, idle_poll_s=0.1, loop_interval_s=0.05))
    periodic = loop.PeriodicChecks(None, worker.name, 0.05)
    periodic.maybe_start()
    periodic.join(120)
    fired = loop._firing(firings()[-1])
    assert fired.status == "training" and fired.cause != too_few.cause
    (job_dir(fired.job_id) / "train.jsonl").unlink()  # the retrain's data is lost: its training fails

    worker.run(max_jobs=1)  # trains (and fails), then runs the checks that see it

    status = loop.loop_status("default")
    (model,) = status.models
    assert model.champion == champion and model.running_retrain is None
    assert model.last_failed_retrain.id == fired.job_id and model.last_failed_retrain.error
    assert [f.status for f in model.firings] == ["retrain_failed", "too_few"]
    assert model.firings[0].error == model.last_failed_retrain.error
    assert Promotions().resolve_alias("default", "support", "champion") == champion
    assert entries(project="default", action="loop.retrain_failed")
    assert verify().ok


def test_the_full_loop_over_http_corrections_retrain_evaluate_canary(service, tiny_model_dir, tmp_path,
                                                                            monkeypatch):
    import httpx
    from conftest import serve_app
    from jobs_helpers import wait_for

    from hone.api.app import create_app
    from hone.api.keys import KeyStore
    from hone.serve.config import ServeConfig

    champion = train_champion(service, tmp_path, held_out=True)
    keys = {role: KeyStore().create(role, role=role) for role in ("developer", "approver", "admin")}
    config = ServeConfig(base=str(tiny_model_dir), base_id="tiny", dtype="fp32", threads=1, jobs={"poll_s": 0.1})
    with serve_app(create_app(config)) as url:
        def call(method: str, path: str, role: str, **body) -> dict:
            response = httpx.request(method, url + path, headers={"Authorization": f"Bearer {keys[role]}"},
                                     timeout=60, **body)
            assert response.status_code == 200, response.text
            return response.json()

        call("PATCH", "/projects/current", "admin", json={"loop": {
            "enabled": True, "triggers": {"corrections": 12}, "min_examples": 10,
            "eval": {"max_examples": 3, "probe_limit": 0}}})
        usage = {}
        for seed in range(30):  # traffic to MODEL@ALIAS is captured by default, and 12 answers get corrected
            reply = call("POST", "/chat/completions", "developer", json={
                "model": "support@champion", "max_tokens": 3,
                "messages": [{"role": "user", "content": ticket(1000 + seed)}]})
            assert reply["model"] == "support@champion"
            usage[reply["id"]] = reply["usage"]["completion_tokens"]
            if seed < 12:
                call("POST", "/feedback", "developer", json={"response_id": reply["id"], "rating": 2,
                                                             "correction": f"the answer to ticket {seed}"})
        captured = CaptureStore().captured("default", model="support@champion", limit=50)[0]
        assert len(captured) == 30 and len([c for c in captured if c.feedback]) == 12
        assert {c.response_id: c.usage["completion_tokens"] for c in captured} == usage
        assert call("POST", "/loop/check", "approver", json={})["errors"] == []
        (fired,) = call("GET", "/loop/status", "developer")["models"][0]["firings"]
        assert (fired["trigger"], fired["figure"], fired["threshold"]) == ("corrections", 12, 12)
        assert fired["job_id"] and fired["status"] in ("training", "trained", "evaluating", "rejected", "canary")

        # the server's worker trains the challenger, then its loop checks evaluate it against the champion
        def done() -> dict | None:
            firing = call("GET", "/loop/status", "developer")["models"][0]["firings"][0]
            return firing if firing["status"] not in ("training", "trained", "evaluating") else None

        evaluated = wait_for(done, seconds=180, every=0.5)
    assert evaluated["challenger"].startswith("ft:tiny:default:support:")
    assert set(evaluated["verdicts"]) == {"traffic", "eval_set"}, evaluated["error"]
    assert "traffic without corrections not evaluated: no judge in loop.eval.judge" in \
        json.loads(firings()[0].details_json)["eval_notes"]
    with session(engine_for(None)) as db:
        recorded = db.scalars(select(VersionEvaluation).where(
            VersionEvaluation.version_name == evaluated["challenger"],
            VersionEvaluation.against_version == champion)).all()
    assert len(recorded) == 2
    if all(v == "SHIP" for v in evaluated["verdicts"].values()):
        assert evaluated["status"] == "canary"
    else:  # the champion keeps the alias; below, a challenger that beats it gets its canary
        assert evaluated["status"] == "rejected"
        assert Promotions().resolve_alias("default", "support", "champion") == champion
        with session(engine_for(None)) as db:
            db.get(LoopFiring, fired["id"]).status = "trained"
        monkeypatch.setattr("hone.registry.evaluate.evaluate_against", lambda *a, **k: {"verdict": "SHIP"})
        (shipped,) = loop.evaluate_challengers("default", actor=ACTOR)
        assert shipped.status == "canary", shipped.error
    with session(engine_for(None)) as db:
        split = db.scalar(select(AliasSplit).where(AliasSplit.status == "active"))
    assert (split.challenger_version, split.weight, split.mode) == (evaluated["challenger"], 0.1, "canary")
    assert loop.loop_status("default").models[0].active_canary.id == split.id

    # the canary arm regresses (planted: half its replies break the contract): rolled back, the champion keeps it
    from test_canary import traffic

    from hone.monitor.canary import Canaries

    Projects().update("default", {"monitor": {"contracts": {"support": {"labels": ["yes", "no"]}}},
                                  "canary": {"auto_promote": True}}, actor=ACTOR)
    traffic(None, champion, "primary", 60, valid=0.95)
    traffic(None, split.challenger_version, "canary", 60, valid=0.5, seed=1)
    assert [d.action for d in Canaries().check_all(actor=ACTOR)] == ["rolled_back"]
    assert Promotions().resolve_alias("default", "support", "champion") == champion
    # a challenger that holds up (planted improvement) past its window is promoted
    Canaries().start("default", "support", "champion", split.challenger_version, window_requests=60, actor=ACTOR)
    traffic(None, champion, "primary", 80, valid=0.9, seed=2)
    traffic(None, split.challenger_version, "canary", 80, valid=1.0, seed=3)
    assert [d.action for d in Canaries().check_all(actor=ACTOR)] == ["promoted"]
    assert Promotions().resolve_alias("default", "support", "champion") == split.challenger_version

    actions = {entry.action for entry in entries(project="default", limit=1000)}
    assert {"loop.fired", "loop.trained", "loop.evaluated", "eval.verdict", "canary.started", "canary.rolled_back",
            "canary.promoted", "alias.moved"} <= actions
    assert verify().ok


def test_an_evaluation_that_fails_or_never_finishes_promotes_nothing(service, tmp_path, monkeypatch):
    enable_loop(eval={"timeout_s": 60})
    now = utc_now()

    def broken(*args, **kwargs):
        raise RuntimeError("the eval crashed")

    monkeypatch.setattr("hone.registry.evaluate.evaluate_against", broken)
    with session(engine_for(None)) as db:
        for name, status, moment in (("a", "trained", now), ("b", "evaluating", now - timedelta(seconds=120))):
            db.add(LoopFiring(id=f"loopfire-{name}", project="default", model="support", trigger="schedule",
                              cause=name, status=status, created_at=moment, updated_at=moment,
                              details_json=json.dumps({"challenger": "x", "dataset": str(tmp_path / "d"),
                                                       "eval_set": str(tmp_path / "missing.jsonl")})))
    shown = {f.id: f for f in loop.evaluate_challengers("default", actor=ACTOR, now=now)}
    assert shown["loopfire-b"].status == "eval_failed" and "did not finish within 60 s" in shown["loopfire-b"].error
    assert shown["loopfire-a"].status == "eval_failed"
    with session(engine_for(None)) as db:
        assert db.scalar(select(AliasSplit)) is None


def test_the_loop_over_http_status_for_viewers_checks_for_approvers_and_settings_for_admins(tiny_model_dir,
                                                                                            tmp_path):
    import httpx
    from conftest import serve_app

    from hone.api.app import create_app
    from hone.api.keys import KeyStore
    from hone.serve.config import ServeConfig

    db = f"sqlite:///{tmp_path / 'hone.db'}"
    store = KeyStore(db)
    keys = {role: store.create(role, role=role) for role in ("viewer", "developer", "approver", "admin")}
    config = ServeConfig(base=str(tiny_model_dir), base_id="tiny", dtype="fp32", threads=1, database=db,
                         jobs={"worker": False})
    with serve_app(create_app(config)) as url:
        def call(method: str, path: str, role: str, **body) -> httpx.Response:
            return httpx.request(method, url + path, headers={"Authorization": f"Bearer {keys[role]}"}, **body)

        changed = call("PATCH", "/projects/current", "admin",
                       json={"loop": {"enabled": True, "triggers": {"corrections": 25}}})
        assert changed.status_code == 200, changed.text
        assert changed.json()["settings"]["loop"]["triggers"]["corrections"] == 25
        assert call("PATCH", "/projects/current", "admin", json={"loop": {"triggers": {"corection": 2}}}
                    ).status_code == 400
        status = call("GET", "/loop/status", "viewer").json()
        assert status == {"object": "loop.status", "project": "default", "enabled": True, "models": []}
        missing = call("GET", "/loop/status?model=support", "viewer")  # no such model in this project
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
        assert call("POST", "/loop/check", "approver", json={"force": True, "now": 1}).status_code == 400
        assert call("POST", "/loop/check", "developer", json={}).status_code == 403
        ran = call("POST", "/loop/check", "approver", json={})
        assert ran.status_code == 200 and ran.json()["ran"] is True and ran.json()["errors"] == []
    assert verify(db).ok


def test_a_judged_traffic_slice_is_decided_by_the_judges_wins_and_losses_not_by_the_champions_replies():
    assert loop.pairwise_verdict({"wins": 14, "losses": 2, "ties": 4})[0] == "SHIP"
    assert loop.pairwise_verdict({"wins": 1, "losses": 12, "ties": 0})[0] == "REGRESSION"
    decision, reasons = loop.pairwise_verdict({"wins": 6, "losses": 4, "ties": 10})
    assert decision == "NOT WORTH IT" and "6 wins, 4 losses, 10 ties" in reasons[0]
    assert loop.pairwise_verdict({"wins": 0, "losses": 0, "ties": 5})[0] == "INCOMPLETE"
    assert loop.pairwise_verdict(None)[0] == "INCOMPLETE"
