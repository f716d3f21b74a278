"""The dashboard's monitoring section: the project's served models with the traffic captured from them, and one
model's page with its health per window, drift, canaries and loop status, all as the /v1 API gives them. In real
Chromium: the counts match the requests sent, the pages pass the accessibility check, also at phone width; another
project's model is 404 with the API's message."""

from __future__ import annotations

import re

import httpx
import pytest
from web_helpers import accessibility_problems, dashboard_server, login, needs_browser, screenshot

SENT = 20  # chat requests alpha-dev sends to the base model: enough for latency percentiles


@pytest.fixture(scope="module")
def dashboard(tiny_model_dir, tmp_path_factory):
    with dashboard_server(tiny_model_dir, tmp_path_factory.mktemp("monitoring"), worker=False) as running:
        dev = running.client("alpha-dev")
        for i in range(SENT):
            answer = dev.post("/chat/completions", json={"model": "tiny", "max_tokens": 2,
                                                         "messages": [{"role": "user", "content": f"hello {i}"}]})
            assert answer.status_code == 200, answer.text
        rated = dev.post("/feedback", json={"response_id": answer.json()["id"], "rating": 4})
        assert rated.status_code == 200, rated.text
        yield running


def _logged_in(dashboard, key_name: str) -> httpx.Client:
    client = httpx.Client(base_url=dashboard.root, timeout=60)
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
    assert client.post("/login", data={"api_key": dashboard.keys[key_name], "csrf_token": token}).status_code == 303
    return client


def test_the_api_counts_each_projects_traffic_per_model(dashboard):
    mine = dashboard.client("alpha-viewer").get("/monitor/models").json()["data"]
    assert [(m["model"], m["alias"], m["requests"]) for m in mine] == [("tiny", None, SENT)]
    assert dashboard.client("beta-dev").get("/monitor/models").json()["data"] == []


@needs_browser
def test_the_model_list_and_page_show_the_traffic_that_was_sent(dashboard, page):
    login(page, dashboard, "alpha-admin", "/monitoring")
    assert page.locator('[data-requests="tiny"]').inner_text() == str(SENT)
    assert accessibility_problems(page) == []
    screenshot(page, "monitoring-list")
    page.get_by_role("link", name="tiny", exact=True).click()
    page.wait_for_url(re.compile(r".*/monitoring/tiny$"))
    assert page.locator("[data-total-requests]").inner_text() == str(SENT)
    for chart in ("Requests per window", "Latency"):  # the monitor's own SVG charts
        assert page.get_by_role("img", name=chart).count() == 1
    latency = page.locator("#total-facts dd").first.inner_text()
    assert re.fullmatch(r"\d+ / \d+ / p99 needs 80 more", latency), latency  # p50, p90; p99 needs 100 requests
    assert "1 rated" in page.locator("#total-facts").inner_text()  # the feedback rating counts
    for section in ("Drift from the training data", "Canaries", "Retraining loop"):
        assert page.get_by_role("heading", name=section).count() == 1
    assert "No canary or shadow split for this model." in page.content()
    assert accessibility_problems(page) == []
    screenshot(page, "monitoring-model")
    page.set_viewport_size({"width": 390, "height": 844})
    assert accessibility_problems(page) == []
    screenshot(page, "monitoring-model-phone")


def test_a_window_choice_reaches_the_report_and_a_bad_one_shows_the_api_message(dashboard):
    viewer = _logged_in(dashboard, "alpha-viewer")
    daily = viewer.get("/monitoring/tiny", params={"window": "1d"})
    assert daily.status_code == 200 and "windows of 86400 s" in daily.text
    bad = viewer.get("/monitoring/tiny", params={"window": "soon"})
    api = dashboard.client("alpha-viewer").get("/monitor/models/tiny/report", params={"window": "soon"})
    assert bad.status_code == 400 and api.json()["error"]["message"] in bad.text.replace("&#39;", "'")


def test_another_projects_model_and_a_hostile_name_answer_404_without_leaking(dashboard):
    beta = _logged_in(dashboard, "beta-admin")
    other = beta.get("/monitoring/tiny")
    assert other.status_code == 404 and "does not exist or you do not have access to it" in other.text
    hostile = _logged_in(dashboard, "alpha-admin").get("/monitoring/%3Cscript%3Ealert(1)%3C%2Fscript%3E")
    assert hostile.status_code == 404 and "<script>alert(1)" not in hostile.text
    assert "/tmp" not in hostile.text and "Traceback" not in hostile.text


def _drifted_window() -> dict:
    """The API's shape of a drift answer with one drifted window whose most drifted prompt is markup."""
    from pydantic import TypeAdapter

    from hone.monitor.drift import ClassifierCheck, DriftResult
    from hone.monitor.traffic_drift import DriftWindow, TrafficDrift, VersionDrift

    prompt = DriftResult(status="ok", drifted=True, reasons=("classifier AUC 0.910 above its threshold 0.600",),
                         reference_size=100, window_size=100,
                         classifier=ClassifierCheck(auc=0.91, threshold=0.6, p_value=0.001, drifted=True))
    window = DriftWindow(index=0, start="2026-05-01T09:00:00+00:00", end="2026-05-01T10:00:00+00:00", requests=100,
                         status="ok", drifted=True, prompt=prompt, examples=["<script>alert(1)</script> [EMAIL]"])
    found = TrafficDrift(project="alpha", model="support@champion", alias="champion", window_size=100, min_window=20,
                         contract=False, versions=[VersionDrift(version="support:v2", training_file_sha256="ab",
                                                                reference_size=100, requests=100, windows=[window])])
    return TypeAdapter(TrafficDrift).dump_python(found, mode="json")


def _canary() -> dict:
    """The API's shape of an active canary whose challenger arm has a worse latency."""
    from hone.api.canary import Canary
    from hone.monitor.canary import ArmComparison, ArmStats, ArmTest

    def arm(name: str, version: str, latency: float) -> ArmStats:
        return ArmStats(arm=name, version=version, requests=40, format_checked=0, format_valid=0,
                        format_validity=None, rated=12, mean_rating=4.25, latency_ms_median=latency,
                        latency_ms_p95=latency * 2)

    test = ArmTest(metric="latency", test="one-sided Mann-Whitney U", status="worse", p_value=0.0012, alpha=0.0167,
                   needed_champion=0, needed_challenger=0, detail="the challenger is slower")
    comparison = ArmComparison(split_id="canary-1", champion=arm("champion", "support:v1", 80.0),
                               challenger=arm("challenger", "support:v2", 140.0), tests=[test], family_alpha=0.05,
                               window_requests=200, verdict="worse", needed=160)
    return Canary(id="canary-1", model="support", alias="champion", champion_version="support:v1",
                  challenger_version="support:v2", mode="canary", weight=0.1, sticky="user", status="active",
                  window_requests=200, created_at="2026-05-01T09:00:00+00:00", actor="alpha-approver",
                  comparison=comparison).model_dump(mode="json")


def test_drift_shows_the_alarm_threshold_and_the_most_drifted_prompts_as_text(dashboard):
    from starlette.requests import Request

    from hone.api.auth import Caller
    from hone.web.core import Visitor, templates
    from hone.web.pages.monitoring import WINDOWS, _charts

    report = dashboard.client("alpha-admin").get("/monitor/models/tiny/report").json()
    drift = _drifted_window()
    health, drifted = _charts(report, drift)
    assert len(drifted) == 1 and "alarm threshold" in drifted[0]  # the dashed line's legend
    request = Request({"type": "http", "path": "/monitoring/support", "query_string": b"", "headers": []})
    page = templates.get_template("monitoring/model.html")
    context = {"request": request, "visitor": Visitor(Caller("alpha", "alpha-admin", "admin"), "t", "c"),
               "model": "support@champion", "href": "/monitoring/support%40champion", "alias": None, "window": "1h",
               "since": None, "windows": WINDOWS, "report": report, "health_charts": health, "drift": drift,
               "drift_error": None, "drift_charts": drifted, "canaries": [_canary()], "canary_error": None,
               "loop": {"project": "alpha", "enabled": True, "models": []}, "loop_error": None}
    html = page.render(context)
    assert "0.910 / 0.600" in html and "Most drifted prompts of window #0" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; [EMAIL]" in html and "<script>alert" not in html
    assert "support:v1 vs support:v2" in html and "Verdict: <strong>worse</strong>" in html
    assert "latency: worse (p = 0.0012)" in html and "80 / 160" in html and "140 / 280" in html
    refused = page.render(context | {"loop": None, "loop_error": "model 'support' does not exist"})
    assert "model &#39;support&#39; does not exist" in refused  # a refused section shows the API's message


def test_registered_aliases_without_traffic_are_listed_with_zero_requests():
    from hone.web.pages.monitoring import _model_rows

    traffic = [{"model": "tiny", "alias": None, "requests": 3, "last_request_at": "2026-05-01T09:00:00+00:00"}]
    versions = [{"name": "support:v2", "model": "support", "aliases": ["champion"]}]
    rows = _model_rows(traffic, [{"id": "tiny"}, {"id": "adapter-x"}], versions)
    assert [(r["name"], r["alias"], r["requests"], r["href"]) for r in rows] == [
        ("tiny", None, 3, "/monitoring/tiny"), ("adapter-x", None, 0, None),  # no traffic, not registered: no page
        ("support@champion", "champion", 0, "/monitoring/support%40champion"),
        ("support:v2", None, 0, "/monitoring/support%3Av2")]
