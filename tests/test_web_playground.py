"""The dashboard's playground: one prompt to two models side by side, each reply streamed in from
/v1/chat/completions, with the retrieval sources listed when an index is chosen; a viewer sees the API's refusal.
In real Chromium (the page fixture fails on any script error), with the accessibility check, also at phone width."""

from __future__ import annotations

import pytest
from web_helpers import accessibility_problems, dashboard_server, login, needs_browser, screenshot


@pytest.fixture(scope="module")
def dashboard(tiny_model_dir, tmp_path_factory):
    from hone.retrieval.store import build_index

    folder = tmp_path_factory.mktemp("playground")
    (folder / "docs").mkdir()
    (folder / "docs" / "refunds.md").write_text("Refunds are paid within 14 days of the return arriving.\n")
    index = build_index(folder / "docs", folder / "docs.index", show_progress=False)["index"]
    with dashboard_server(tiny_model_dir, folder, worker=False,
                          indexes={"kb-alpha": {"path": index, "project": "alpha"},
                                   "kb-beta": {"path": index, "project": "beta"}}) as running:
        yield running


def _ask(page, prompt: str, index: str = "") -> None:
    page.get_by_label("Model 1", exact=True).select_option("tiny")
    page.get_by_label("Model 2", exact=True).select_option("tiny")
    page.get_by_label("Temperature 1").fill("0.5")
    page.get_by_label("Temperature 2").fill("1.2")
    page.get_by_label("Prompt").fill(prompt)
    page.get_by_label("Max tokens").fill("8")
    page.get_by_label("Retrieval index").select_option(index)
    page.get_by_role("button", name="Send").click()


@needs_browser
def test_two_replies_stream_side_by_side_with_their_sources(dashboard, page):
    login(page, dashboard, "alpha-dev", "/playground")
    assert page.get_by_label("Retrieval index").locator("option").all_inner_texts() == ["(none)", "kb-alpha"]
    assert accessibility_problems(page) == []
    _ask(page, "When are refunds paid?", index="kb-alpha")
    for n in (1, 2):
        reply = page.locator(f"#reply-{n}")
        reply.locator(".reply-finish", has_text="Finished:").wait_for()
        assert reply.locator(".reply-model").inner_text() == "tiny"
        assert reply.locator(".reply-text").inner_text().strip() != ""
        assert "refunds.md:1" in reply.locator(".sources").inner_text()
        assert reply.locator(".reply-error").is_hidden()
    assert page.locator("#reply-3").is_hidden()  # the third column chose no model
    assert accessibility_problems(page) == []
    screenshot(page, "playground-replies")
    page.set_viewport_size({"width": 390, "height": 844})
    assert accessibility_problems(page) == []
    screenshot(page, "playground-phone")
    captured = dashboard.client("alpha-admin").get("/captures", params={"model": "tiny"}).json()["data"]
    assert sorted(c["request"]["temperature"] for c in captured) == [0.5, 1.2]  # each column's own settings


@needs_browser
def test_without_an_index_no_sources_are_listed(dashboard, page):
    login(page, dashboard, "alpha-dev", "/playground")
    _ask(page, "hello")
    reply = page.locator("#reply-1")
    reply.locator(".reply-finish", has_text="Finished:").wait_for()
    assert reply.locator(".reply-sources").is_hidden()


@needs_browser
def test_a_viewer_sees_the_api_refusal(dashboard, page):
    refusal = dashboard.client("alpha-viewer").post("/chat/completions", json={
        "model": "tiny", "messages": [{"role": "user", "content": "hi"}]}).json()["error"]["message"]
    login(page, dashboard, "alpha-viewer", "/playground")
    assert "cannot call models" in page.locator("main").inner_text()
    _ask(page, "hello")
    for n in (1, 2):
        error = page.locator(f"#reply-{n} .reply-error")
        error.wait_for()
        assert error.inner_text() == refusal
    assert accessibility_problems(page) == []
    screenshot(page, "playground-refused")


def test_the_base_every_registered_version_and_every_alias_may_be_chosen():
    from hone.web.pages.playground import model_choices

    served = [{"id": "tiny"}, {"id": "support:v1"}]
    versions = [{"name": "support:v2", "model": "support", "aliases": ["champion"]},
                {"name": "support:v1", "model": "support", "aliases": []}]
    assert model_choices(served, versions) == ["tiny", "support:v1", "support:v2", "support@champion"]


def test_each_project_is_offered_only_its_own_indexes(dashboard):
    assert dashboard.client("alpha-viewer").get("/indexes").json()["data"] == ["kb-alpha"]
    assert dashboard.client("beta-dev").get("/indexes").json()["data"] == ["kb-beta"]
