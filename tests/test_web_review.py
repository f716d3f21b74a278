"""Human review through `hone serve`: a developer creates a round from a version's evaluation; a viewer reviews it in
Chromium (never seeing which model wrote which reply) and an approver over HTTP; the results show the win rates
with their CIs and Cohen's kappa; the export writes a chat file and a DPO file that hone's own validator accepts.
Roles, projects (beta's keys get 404), forged CSRF and hostile input are refused with the API's message."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.sync_api import expect
from test_human_review import FIRST, SECOND, evaluation_of, register_reviewed_version
from web_helpers import accessibility_problems, dashboard_server, login, needs_browser, screenshot

from hone.data.validate import validate_file

ITEMS = 8  # prompts per round; one repeat makes 9 items per reviewer


@pytest.fixture(scope="module")
def dashboard(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("review")
    with dashboard_server(tiny_model_dir, folder, worker=False) as running:
        running.version = register_reviewed_version(running.db, folder / "eval", project="alpha", examples=10)
        yield running


def _create(dashboard, key: str = "alpha-dev", **body) -> httpx.Response:
    request = {"source": "evaluation", "model_version": dashboard.version, "items": ITEMS, "seed": 1,
               "name": "Support answers"} | body
    return dashboard.client(key).post("/reviews", json=request)


def _judge_all(client: httpx.Client, round_id: str, prefer_first: bool) -> int:
    """Judge every item of the client's reviewer, preferring FIRST's reply (it starts "I think") or SECOND's."""
    judged = 0
    while not (queue := client.get(f"/reviews/{round_id}/next").json())["done"]:
        item = queue["item"]
        choice = "A" if item["reply_a"].startswith("I think") == prefer_first else "B"
        answer = client.post(f"/reviews/{round_id}/items/{item['id']}/judgment", json={"choice": choice})
        assert answer.status_code == 200, answer.text
        judged += 1
    return judged


def _logged_in(dashboard, key_name: str) -> tuple[httpx.Client, str]:
    """A dashboard client logged in through the form, and its session's CSRF token."""
    client = httpx.Client(base_url=dashboard.root)
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
    assert client.post("/login", data={"api_key": dashboard.keys[key_name], "csrf_token": token}).status_code == 303
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/review").text).group(1)
    return client, csrf


def test_roles_projects_and_hostile_input_over_http(dashboard):
    viewer, beta = dashboard.client("alpha-viewer"), dashboard.client("beta-dev")
    refused = _create(dashboard, "alpha-viewer")
    assert refused.status_code == 403
    assert "needs the developer role or above; the key 'alpha-viewer' has the viewer role" in \
        refused.json()["error"]["message"]
    round_id = _create(dashboard).json()["id"]

    item = viewer.get(f"/reviews/{round_id}/next").json()["item"]
    assert set(item) == {"id", "object", "position", "total", "prompt", "reply_a", "reply_b", "judgment"}
    for path in (f"/reviews/{round_id}", f"/reviews/{round_id}/next", f"/reviews/{round_id}/items", "/reviews"):
        text = viewer.get(path).text
        assert FIRST not in text and SECOND not in text and dashboard.version not in text, path
    assert viewer.get("/reviews", params={"model_version": dashboard.version}).status_code == 403
    assert viewer.get(f"/reviews/{round_id}/results").status_code == 403

    for method, path in (("GET", f"/reviews/{round_id}"), ("GET", f"/reviews/{round_id}/next"),
                         ("GET", f"/reviews/{round_id}/results"), ("POST", f"/reviews/{round_id}/export"),
                         ("POST", f"/reviews/{round_id}/items/{item['id']}/judgment")):
        answer = beta.request(method, path, json={"choice": "A"} if "judgment" in path else None)
        assert answer.status_code == 404 and "no review" in answer.json()["error"]["message"], path
    assert beta.get("/reviews").json()["data"] == []
    beta_create = _create(dashboard, "beta-dev", model_version=None, evaluation=evaluation_of(dashboard.db,
                                                                                            dashboard.version))
    assert beta_create.status_code == 404  # alpha's evaluation is not beta's

    judgment = f"/reviews/{round_id}/items/{item['id']}/judgment"
    assert viewer.post(judgment, json={"choice": "C"}).status_code == 400
    assert viewer.post(judgment, json={"choice": "A", "corrected_answer": "x" * 20_001}).status_code == 400
    assert viewer.post(judgment, json={"choice": "A", "candidate": FIRST}).status_code == 400  # unknown field
    assert viewer.post(f"/reviews/{round_id}/items/ritem-nope/judgment", json={"choice": "A"}).status_code == 404
    assert viewer.get("/reviews/..%2F..%2Fetc%2Fpasswd").status_code == 404
    assert viewer.get("/reviews", params={"evaluation": "eval-x"}).status_code == 403
    assert dashboard.client("alpha-dev").get("/reviews", params={"evaluation": "../x"}).status_code == 400
    assert _create(dashboard, items=0).status_code == 400
    traffic = _create(dashboard, source="traffic", model_version=None, model="tiny")
    assert traffic.status_code == 403 and "needs the admin role" in traffic.json()["error"]["message"]
    no_traffic = _create(dashboard, "alpha-admin", source="traffic", model_version=None, model="tiny")
    assert no_traffic.status_code == 409 and "no captured shadow traffic" in no_traffic.json()["error"]["message"]
    assert _create(dashboard, model_version="ft:nope").status_code == 404

    page, csrf = _logged_in(dashboard, "alpha-viewer")
    forged = page.post(f"/review/{round_id}/items/{item['id']}", data={"csrf_token": "forged", "choice": "A"})
    assert forged.status_code == 403 and "CSRF token does not match" in forged.text
    form = page.post("/review", data={"csrf_token": csrf, "model_version": dashboard.version})
    assert form.status_code == 403 and "needs the developer role" in form.text
    hidden = page.get(f"/review/{round_id}/results")
    assert hidden.status_code == 403 and "needs the developer role" in hidden.text and FIRST not in hidden.text
    assert page.get("/review/review-nope").status_code == 404


def test_two_reviewers_results_and_an_export_that_hone_validates(dashboard, tiny_model_dir, tmp_path):
    developer = dashboard.client("alpha-dev")
    created = _create(dashboard, name="Two reviewers").json()
    assert created["candidates"] == [FIRST, SECOND] and created["progress"]["total"] == ITEMS + 1
    assert _judge_all(dashboard.client("alpha-viewer"), created["id"], prefer_first=False) == ITEMS + 1
    approver = dashboard.client("alpha-approver")
    assert _judge_all(approver, created["id"], prefer_first=False) == ITEMS + 1
    # a viewer who reviews this round cannot read the evaluation's replies by candidate: the round stays blind
    unblinding = dashboard.client("alpha-viewer").get(f"/evaluations/{created['evaluation']}/examples")
    assert unblinding.status_code == 403 and unblinding.json()["error"]["code"] == "blind_reviewer"
    assert developer.get(f"/evaluations/{created['evaluation']}/examples").status_code != 403
    first_item = approver.get(f"/reviews/{created['id']}/items").json()["data"][0]
    replaced = approver.post(f"/reviews/{created['id']}/items/{first_item['id']}/judgment",
                             json={"choice": "both_bad", "corrected_answer": "It is exactly 4.", "reason": "wrong"})
    assert replaced.json()["judgment"]["choice"] == "both_bad"

    results = developer.get(f"/reviews/{created['id']}/results").json()
    wins = {c["name"]: c for c in results["candidates"]}
    assert wins[SECOND]["win_rate"] > 0.9 and wins[SECOND]["ci_low"] <= wins[SECOND]["win_rate"] <= 1.0
    assert results["judgments"] == 2 * ITEMS and results["agreement"]["method"] == "cohen"
    assert results["agreement"]["items"] == ITEMS and results["agreement"]["observed"] == pytest.approx(1 - 1 / ITEMS)
    assert results["judge_agreement"]["items"] > 0
    listed = developer.get("/reviews", params={"evaluation": created["evaluation"]}).json()
    assert listed["object"] == "list" and created["id"] in [r["id"] for r in listed["data"]]
    # the results flow into the evaluation's page: the round, its kappa and each candidate's win rate
    shown = _logged_in(dashboard, "alpha-dev")[0].get(f"/evaluations/{created['evaluation']}").text
    section = shown[shown.index('data-section="human-review"'):]
    assert "Two reviewers" in section and f"κ = {results['agreement']['kappa']:.2f}" in section
    assert f"{SECOND}: {wins[SECOND]['win_rate'] * 100:.0f}%" in section
    blind = _logged_in(dashboard, "alpha-viewer")[0].get(f"/evaluations/{created['evaluation']}").text
    assert "Two reviewers" not in blind and "needs the developer role" in blind

    exported = developer.post(f"/reviews/{created['id']}/export").json()
    assert exported["corrections"] == 1 and exported["pairs"] >= ITEMS
    for made, expected in ((exported["corrections_file"], "chat"), (exported["preference_file"], "dpo")):
        path = tmp_path / made["filename"]
        path.write_bytes(developer.get(f"/files/{made['id']}/content").content)
        report = validate_file(path, model=str(tiny_model_dir))
        assert report.format == expected and report.ok, report.errors
        assert developer.get(f"/files/{made['id']}").json()["purpose"] == "fine-tune"
    assert dashboard.client("beta-dev").get(f"/files/{exported['preference_file']['id']}").status_code == 404
    # the corrections are also a curated dataset version the project's Datasets page lists
    version = developer.get(f"/datasets/{exported['corrections_dataset']}").json()
    assert version["counts"]["train"] == 1 and "pii" in [step["name"] for step in version["steps"]]
    assert dashboard.client("beta-dev").get(f"/datasets/{exported['corrections_dataset']}").status_code == 404
    only = developer.post(f"/reviews/{created['id']}/export", json={"corrections": False}).json()
    assert only["corrections_file"] is None and only["preference_file"]["examples"] == exported["pairs"]


@needs_browser
def test_review_in_chromium_blind_then_read_the_results(dashboard, page, browser):
    round_id = _create(dashboard, name="Browser round", seed=7).json()["id"]
    login(page, dashboard, "alpha-viewer", "/review")
    assert page.get_by_role("link", name="Browser round").first.is_visible()
    assert page.get_by_role("button", name="Create round").is_disabled()
    assert accessibility_problems(page) == []
    screenshot(page, "review-list-viewer")

    page.goto(f"{dashboard.root}/review/{round_id}")
    html = page.content()
    for secret in (FIRST, SECOND, dashboard.version, "swapped"):
        assert secret not in html
    assert page.get_by_text(f"Item 1 of {ITEMS + 1}").is_visible()
    assert accessibility_problems(page) == []
    screenshot(page, "review-item")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    assert accessibility_problems(page) == []
    screenshot(page, "review-item-phone")
    page.set_viewport_size({"width": 1280, "height": 900})

    ties = {2, 3}  # the viewer calls these places a tie, so kappa has more than one category to work with
    for position in range(1, ITEMS + 2):
        expect(page.get_by_text(f"Item {position} of {ITEMS + 1}")).to_be_visible()
        reply_a = page.locator("#reply-a-h + pre").inner_text()
        assert FIRST not in page.content()
        key = "3" if position in ties else "1" if reply_a.startswith("It is") else "2"  # else prefer SECOND's
        page.locator("body").press(key)  # the keyboard picks the choice
        if position == 1:
            page.get_by_label("Corrected answer (optional)").fill("It is 0, as 0 + 0 = 0.")
            page.get_by_label("Reason (optional)").fill("neither shows the sum")
        page.get_by_role("button", name="Submit and next").click()
    expect(page.get_by_text(f"You have judged all {ITEMS + 1} items")).to_be_visible()
    assert page.get_by_role("link", name="See the results").count() == 0  # a viewer is not shown results

    viewer_items = dashboard.client("alpha-viewer").get(f"/reviews/{round_id}/items").json()["data"]
    tied = {i["prompt"][0]["content"] for i in viewer_items if i["judgment"]["choice"] == "tie" and i["position"] <= 3}
    approver = dashboard.client("alpha-approver")
    while not (queue := approver.get(f"/reviews/{round_id}/next").json())["done"]:
        item = queue["item"]
        choice = "tie" if item["prompt"][0]["content"] in tied else "A" if item["reply_a"].startswith("It is") else "B"
        approver.post(f"/reviews/{round_id}/items/{item['id']}/judgment", json={"choice": choice})
    context = browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": 900})
    developer = context.new_page()
    login(developer, dashboard, "alpha-dev", f"/review/{round_id}/results")
    text = developer.locator("main").inner_text()
    results = dashboard.client("alpha-dev").get(f"/reviews/{round_id}/results").json()
    kappa, second = results["agreement"]["kappa"], results["candidates"][1]
    assert kappa is not None and 0.5 < second["win_rate"] < 1  # the ties count half
    assert re.search(rf"{SECOND}\s+{second['win_rate'] * 100:.1f}%\s+{second['ci_low'] * 100:.1f}%", text)
    agreement = developer.locator("section", has=developer.locator("#agreement-h")).inner_text()
    assert f"Cohen's kappa\n{kappa:.3f}" in agreement and f"Items compared\n{ITEMS}" in agreement
    assert "/tmp" not in developer.content() and "report.json" not in developer.content()  # no server path
    assert accessibility_problems(developer) == []
    screenshot(developer, "review-results")
    developer.get_by_role("button", name="Export corrections and preference pairs").click()
    developer.wait_for_url(re.compile(r".*/exported\?.*"))
    assert "1 corrected answer and" in developer.locator("main").inner_text()
    assert developer.get_by_role("link", name=f"{round_id}-preferences.jsonl").is_visible()
    files = len(dashboard.client("alpha-dev").get("/files").json()["data"])
    developer.reload()  # shows the export again, writes nothing new
    assert developer.get_by_role("link", name=f"{round_id}-preferences.jsonl").is_visible()
    assert len(dashboard.client("alpha-dev").get("/files").json()["data"]) == files
    assert accessibility_problems(developer) == []
    screenshot(developer, "review-exported")
    developer.goto(f"{dashboard.root}/review")
    assert accessibility_problems(developer) == []
    screenshot(developer, "review-list-developer")
    context.close()
