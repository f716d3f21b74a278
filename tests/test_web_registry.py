"""The registry pages and the /v1 routes behind them: a version's lineage, model card and Annex IV documentation with
no server path; promotion requested by a developer, approved by an approver who did not train the version, the
alias moving in its history, and rolled back, in real Chromium; the actions disabled for roles that cannot take
them and refused by the API when forged; another project's model, forged forms and hostile names get a clean 404
or 403."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from markupsafe import escape
from test_registry_governance import eval_summary
from web_helpers import Dashboard, accessibility_problems, dashboard_server, login, needs_browser, screenshot

from hone.registry.promotion import record_evaluation
from hone.registry.versions import Registry
from hone.store import session
from hone.web.core import path_part
from hone.web.pages.registry import markdown_html

MODEL = "team:support"  # a ':' in the model name, as fine-tuned names have
PAGE = f"/registry/{path_part(MODEL)}"
API = f"/registry/models/{path_part(MODEL)}/versions"


def _register(db: str, folder: Path, model: str, number: int, author: str) -> str:
    """Register version `number` of `model` in project alpha with a SHIP verdict, as a worker would (no training)."""
    name = f"ft:tiny:alpha:{model}:job{number:05d}"
    with session(Registry(db).engine) as tx:
        Registry(db).register(tx, project="alpha", name=name, base_model=str(folder / "bases" / "tiny-base"),
                              base_fingerprint="f" * 64, job_id=None, training_file_sha256="a" * 64,
                              dataset_id=None, config={"method": "lora", "base_model": str(folder / "bases")},
                              metrics={"steps": 12, "tokens": 3400, "final_train_loss": 1.25},
                              run_dir=folder / f"{model}-{number}", weights_dir=folder / f"{model}-{number}" / "lora",
                              eval_report=eval_summary(folder / f"eval-{model}-{number}", "SHIP"), verdict="SHIP",
                              actor="worker w1", model=model, author=author)
    return name


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    """A dashboard with two versions of `team:support` trained by alpha-dev (v2 evaluated against v1) and one of
    `notes` trained by alpha-approver."""
    folder = tmp_path_factory.mktemp("registry")
    with dashboard_server(tiny_model_dir, folder, worker=False) as dashboard:
        first, second = (_register(dashboard.db, folder, MODEL, n, "alpha-dev") for n in (1, 2))
        with session(Registry(dashboard.db).engine) as tx:
            record_evaluation(tx, project="alpha", version_name=second, against=first, actor="alpha-dev",
                              summary=eval_summary(folder / "v2-vs-v1", "SHIP"))
        _register(dashboard.db, folder, "notes", 1, "alpha-approver")
        yield dashboard, folder, (first, second)


def _csrf(text: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', text).group(1)


def _session(dashboard: Dashboard, key_name: str) -> httpx.Client:
    """An HTTP client logged in to the dashboard through the login form."""
    client = httpx.Client(base_url=dashboard.root, timeout=60)
    answer = client.post("/login", data={"api_key": dashboard.keys[key_name], "csrf_token": _csrf(client.get(
        "/login").text)})
    assert answer.status_code == 303
    return client


def test_lineage_card_and_document_name_ids_and_fingerprints_but_no_server_path(served):
    dashboard, folder, (first, _) = served
    viewer = dashboard.client("alpha-viewer")
    lineage = viewer.get(f"{API}/1/lineage").json()
    assert [link["stage"] for link in lineage["lineage"]] == ["dataset", "job", "run", "weights", "eval"]
    dataset, _, run, weights, evaluation = lineage["lineage"]
    assert lineage["name"] == first and lineage["author"] == "alpha-dev" and dataset["sha256"] == "a" * 64
    assert (run["base_model"], run["base_fingerprint"], run["method"], run["steps"]) == ("tiny-base", "f" * 64,
                                                                                       "lora", 12)
    assert weights["folder"] == "lora" and evaluation["verdict"] == "SHIP"
    assert evaluation["evaluations"][0]["reasons"] == ["primary metric says SHIP"]
    against = viewer.get(f"{API}/2/lineage").json()["lineage"][4]["evaluations"]
    assert [e["against_version"] for e in against] == [None, first]
    # each evaluation is the one GET /v1/evaluations/{id} answers for
    assert viewer.get(f"/evaluations/{against[1]['id']}").json()["against"] == first

    card = viewer.get(f"{API}/v1/card").json()
    assert card["metadata"]["base_model"] == "tiny-base" and card["markdown"].startswith("---\n")
    assert f"# {first}" in card["markdown"]
    document = viewer.get(f"{API}/1/document").json()
    assert "Annex IV" in document["markdown"] and "`tiny-base`" in document["markdown"]
    assert viewer.get(f"{API}/1").json()["base_model"] == "tiny-base"
    for text in (str(lineage), str(card), str(document)):
        assert str(folder) not in text and "/tmp" not in text

    beta = dashboard.client("beta-admin")
    for path in (f"{API}/1", f"{API}/1/lineage", f"{API}/1/card", f"{API}/1/document"):
        refused = beta.get(path)
        assert refused.status_code == 404 and "do not have access to it" in refused.json()["error"]["message"]
    missing = viewer.get(f"{API}/9/card")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "version_not_found"


def test_card_and_document_pages_render_markdown_with_raw_html_as_text(served):
    dashboard, folder, (first, _) = served
    viewer = _session(dashboard, "alpha-viewer")
    for kind, heading in (("card", "Model card"), ("document", "Technical documentation (Annex IV)")):
        shown = viewer.get(f"{PAGE}/1/{kind}")
        assert shown.status_code == 200 and f"<h1>{heading}: team:support v1</h1>" in shown.text
        assert "<table>" in shown.text and "tiny-base" in shown.text
        assert str(folder) not in shown.text and "/tmp" not in shown.text
    rendered = markdown_html("# Title\n\n<script>alert(1)</script> <img src=x onerror=alert(1)>\n")
    assert "<h2>Title</h2>" in rendered and "<script>" not in rendered and "<img" not in rendered
    assert "&lt;script&gt;" in rendered


def test_another_project_forged_forms_and_hostile_names_get_clean_refusals(served):
    dashboard, folder, _ = served
    beta = _session(dashboard, "beta-dev")
    assert "team:support" not in beta.get("/registry").text
    hidden = beta.get(f"{PAGE}/1")
    assert hidden.status_code == 404 and "has no version" in hidden.text and "do not have access to it" in hidden.text
    assert beta.get(f"{PAGE}/1/card").status_code == 404

    developer = _session(dashboard, "alpha-dev")
    forged = developer.post(f"{PAGE}/1/promote", data={"csrf_token": "forged", "alias": "champion"})
    assert forged.status_code == 403 and "CSRF token does not match" in forged.text
    for path in (f"/registry/{path_part(MODEL + '@champion')}/1", "/registry/team:support:x/1",
                 "/registry/..%2F..%2Fetc/1", f"{PAGE}/..%2F1", "/registry/%2E%2E/1/card", f"{PAGE}/v9/document"):
        answer = developer.get(path)
        assert answer.status_code == 404, path
        assert "text/html" in answer.headers["content-type"]
        assert "Traceback" not in answer.text and str(folder) not in answer.text and "/tmp" not in answer.text
    bad_alias = developer.post(f"{PAGE}/1/promote", data={"csrf_token": _csrf(developer.get(f"{PAGE}/1").text),
                                                          "alias": "../champion"})
    assert bad_alias.status_code == 400 and "is not valid: use letters" in bad_alias.text


def test_the_author_of_a_version_cannot_approve_it(served):
    dashboard, _, _ = served
    asked = dashboard.client("alpha-dev").post("/registry/models/notes/promotions",
                                               json={"version": "1", "alias": "champion"}).json()
    approver = _session(dashboard, "alpha-approver")
    shown = approver.get("/registry/notes/1")
    assert "You (alpha-approver) trained this version" in shown.text
    assert re.search(r'<button type="button" disabled[^>]*>Approve</button>', shown.text)
    forged = approver.post(f"/registry/notes/1/promotions/{asked['id']}/approve",
                           data={"csrf_token": _csrf(shown.text), "comment": "mine"})
    assert forged.status_code == 403
    assert "alpha-approver created the job that trained version 1" in forged.text
    assert "(author_cannot_approve)" in forged.text and "Promotion requests for v1" in forged.text  # the page again


@needs_browser
def test_request_approve_and_roll_back_a_promotion_in_a_browser(served, page):
    dashboard, folder, (first, second) = served
    login(page, dashboard, "alpha-dev", "/registry")
    model = page.get_by_role("region", name="team:support")
    assert model.get_by_role("row").count() == 3  # the header and two versions
    assert accessibility_problems(page) == []
    model.get_by_role("link", name="v1", exact=True).click()
    page.wait_for_url(re.compile(r".*/registry/team%3Asupport/1$"))
    assert page.get_by_role("button", name="Roll back").count() == 0  # no alias yet
    page.get_by_label("Alias", exact=True).fill("champion")
    page.get_by_label("Reason", exact=True).fill("answers <b>better</b>")
    page.get_by_role("button", name="Request promotion").click()
    page.wait_for_url(re.compile(r".*\?done=pending$"))
    request = page.get_by_role("article").filter(has_text="@champion")
    assert request.get_by_text("pending").first.is_visible()
    assert request.get_by_text("answers <b>better</b>").is_visible()  # user text shown as text
    assert request.get_by_role("button", name="Approve").is_disabled()
    assert "needs the approver role; you are a developer" in request.inner_text()
    screenshot(page, "registry-version-requested")
    assert accessibility_problems(page) == []

    page.context.clear_cookies()
    login(page, dashboard, "alpha-approver", f"/registry/{MODEL}/1")  # the raw name: next= is a query
    page.get_by_label("Comment", exact=True).fill("checked 20 replies")
    page.get_by_role("button", name="Approve").click()
    page.wait_for_url(re.compile(r".*\?done=promoted$"))
    assert page.get_by_role("status").inner_text() == "Promoted: the alias points at this version now."
    assert page.get_by_role("heading", level=1).inner_text().endswith("@champion")
    history = page.get_by_role("table", name="Alias history")
    assert history.get_by_role("row").nth(1).inner_text().split("\t")[1:5] == ["alpha-approver", "promote",
                                                                               "@champion", "none → v1"]
    assert "checked 20 replies" in page.get_by_role("article").inner_text()

    second_request = dashboard.client("alpha-dev").post(f"/registry/models/{path_part(MODEL)}/promotions",
                                                        json={"version": "2", "alias": "champion"}).json()
    dashboard.client("alpha-approver").post(f"/registry/promotions/{second_request['id']}/approve")
    page.goto(f"{dashboard.root}{PAGE}/2")
    page.get_by_label("Reason for rolling back @champion").fill("complaints")
    page.get_by_role("button", name="Roll back @champion").click()
    page.wait_for_url(re.compile(r".*\?done=rolled_back$"))
    rows = [row.inner_text().split("\t") for row in history.get_by_role("row").all()[1:]]
    assert [(r[2], r[4], r[5]) for r in rows] == [("rollback", "v2 → v1", "complaints"), ("promote", "v1 → v2", "-"),
                                                  ("promote", "none → v1", "answers <b>better</b>")]
    assert page.get_by_role("table").filter(has_text="Points at").get_by_role("link").inner_text() == "v1"
    screenshot(page, "registry-version-rolled-back")
    assert accessibility_problems(page) == []
    page.goto(f"{dashboard.root}{PAGE}/1")
    page.get_by_label("Alias", exact=True).fill("champion")
    page.get_by_role("button", name="Request promotion").click()  # champion is v1 already: the API's 409 on the page
    assert "team:support@champion already points to version 1" in page.get_by_role("alert").inner_text()
    assert page.get_by_label("Alias", exact=True).input_value() == "champion"

    page.goto(f"{dashboard.root}/registry")
    model_v1 = page.get_by_role("region", name="team:support").get_by_role("row").filter(has_text="v1")
    assert model_v1.get_by_text("@champion").is_visible()
    screenshot(page, "registry-list")
    assert accessibility_problems(page) == []
    page.goto(f"{dashboard.root}{PAGE}/1/document")
    assert page.get_by_role("heading", name="1. General description of the AI system").is_visible()
    screenshot(page, "registry-document")
    assert accessibility_problems(page) == []
    page.goto(f"{dashboard.root}{PAGE}/1/card")
    screenshot(page, "registry-card")
    assert accessibility_problems(page) == []
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    page.goto(f"{dashboard.root}{PAGE}/1")
    screenshot(page, "registry-version-phone")
    assert accessibility_problems(page) == []
    assert str(folder) not in page.content() and "/tmp" not in page.content()


@needs_browser
def test_a_viewer_sees_the_actions_disabled_and_a_forged_post_gets_the_api_refusal(served, page):
    dashboard, _, _ = served
    login(page, dashboard, "alpha-viewer", f"/registry/{MODEL}/2")
    assert page.get_by_role("button", name="Request promotion").is_disabled()
    assert page.get_by_text("Requesting a promotion needs the developer role; you are a viewer.").is_visible()
    assert page.get_by_label("Alias", exact=True).count() == 0
    screenshot(page, "registry-version-viewer")
    assert accessibility_problems(page) == []

    viewer = _session(dashboard, "alpha-viewer")
    csrf = _csrf(viewer.get(f"{PAGE}/2").text)
    forged = viewer.post(f"{PAGE}/2/promote", data={"csrf_token": csrf, "alias": "champion"})
    api = dashboard.client("alpha-viewer").post(f"/registry/models/{path_part(MODEL)}/promotions",
                                                json={"version": "2", "alias": "champion"})
    assert forged.status_code == api.status_code == 403
    assert str(escape(api.json()["error"]["message"])) in forged.text
    rollback = viewer.post(f"{PAGE}/2/aliases/champion/rollback", data={"csrf_token": csrf})
    assert rollback.status_code == 403 and "insufficient_role" in rollback.text
