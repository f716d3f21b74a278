"""The dashboard's audit section: the visitor's project's log, newest first, filtered by actor, action and object,
page by page, with `hone audit verify`'s result. Approvers see it; a developer gets the API's refusal; another
project never sees these entries. In real Chromium: the page and its accessibility check."""

from __future__ import annotations

import re

import httpx
import pytest
from web_helpers import accessibility_problems, dashboard_server, login, needs_browser, screenshot

HOSTILE = "<img src=x onerror=alert(1)>.jsonl"  # a file name that is markup


@pytest.fixture(scope="module")
def dashboard(tiny_model_dir, tmp_path_factory):
    with dashboard_server(tiny_model_dir, tmp_path_factory.mktemp("audit"), worker=False) as running:
        yield running


@pytest.fixture(scope="module")
def uploads(dashboard) -> dict[str, str]:
    """File ids by name: two uploaded in alpha (one with a hostile name), one in beta."""
    sent = {"alpha-a": ("alpha-dev", "a.jsonl"), "alpha-b": ("alpha-admin", HOSTILE),
            "beta": ("beta-dev", "beta.jsonl")}
    ids = {}
    line = b'{"prompt": "a", "completion": "b"}\n'
    for name, (key, filename) in sent.items():
        answer = dashboard.client(key).post("/files", files={"file": (filename, line)}, data={"purpose": "fine-tune"})
        assert answer.status_code == 200, answer.text
        ids[name] = answer.json()["id"]
    return ids


def _logged_in(dashboard, key_name: str) -> httpx.Client:
    client = httpx.Client(base_url=dashboard.root, timeout=60)
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
    assert client.post("/login", data={"api_key": dashboard.keys[key_name], "csrf_token": token}).status_code == 303
    return client


def _object_ids(html: str) -> list[str]:
    return re.findall(r'<code class="object-id">([^<]+)</code>', html)


@needs_browser
def test_an_approver_sees_the_projects_entries_verified(dashboard, uploads, page):
    login(page, dashboard, "alpha-approver", "/audit")
    assert "Verified:" in page.locator("#verification").inner_text()
    table = page.locator("#entries").inner_text()
    assert uploads["alpha-a"] in table and uploads["alpha-b"] in table and uploads["beta"] not in table
    row = page.locator("#entries tr", has_text=uploads["alpha-b"])
    row.locator("summary").click()
    assert HOSTILE in row.locator("pre").inner_text()  # shown as text, not markup
    assert page.locator("#entries img").count() == 0
    assert accessibility_problems(page) == []
    screenshot(page, "audit-list")
    page.set_viewport_size({"width": 390, "height": 844})
    assert accessibility_problems(page) == []
    screenshot(page, "audit-list-phone")


def test_filters_narrow_the_list_and_pages_follow_the_cursor(dashboard, uploads):
    approver = _logged_in(dashboard, "alpha-approver")
    everything = _object_ids(approver.get("/audit").text)
    assert uploads["alpha-a"] in everything and uploads["alpha-b"] in everything
    one = approver.get("/audit", params={"object_id": uploads["alpha-a"]}).text
    assert set(_object_ids(one)) == {uploads["alpha-a"]}
    by_admin = approver.get("/audit", params={"actor": "alpha-admin", "action": "file.uploaded"}).text
    assert _object_ids(by_admin) == [uploads["alpha-b"]]
    first = approver.get("/audit", params={"limit": 1, "action": "file.uploaded"})
    older = re.search(r'href="(/audit\?[^"]+)" rel="next"', first.text)
    assert older and "action=file.uploaded" in older.group(1)
    second = approver.get(older.group(1).replace("&amp;", "&"))
    assert second.status_code == 200 and _object_ids(second.text) != _object_ids(first.text)
    assert "Newest entries" in second.text


def test_a_developer_gets_the_api_refusal_and_another_project_sees_none_of_it(dashboard, uploads):
    refused = _logged_in(dashboard, "alpha-dev").get("/audit")
    api = dashboard.client("alpha-dev").get("/audit/entries").json()["error"]["message"]
    assert refused.status_code == 403 and api in refused.text.replace("&#39;", "'")
    beta = _logged_in(dashboard, "beta-admin").get("/audit").text
    assert uploads["beta"] in _object_ids(beta)
    assert uploads["alpha-a"] not in beta and uploads["alpha-b"] not in beta
    admin = _logged_in(dashboard, "alpha-admin")
    for bad in ({"since": "<script>x</script>"}, {"limit": "many"}, {"after": "audit-99999"}):
        api = dashboard.client("alpha-admin").get("/audit/entries", params=bad)
        shown = admin.get("/audit", params=bad)
        assert shown.status_code == api.status_code >= 400 and "<script>x" not in shown.text
        assert api.json()["error"]["message"] in shown.text.replace("&#39;", "'").replace("&lt;", "<").replace(
            "&gt;", ">"), bad


def test_the_object_type_filter_keeps_only_that_kind_of_object(tmp_path, tiny_model_dir):
    with dashboard_server(tiny_model_dir, tmp_path, worker=False) as dashboard:
        upload = {"file": ("a.jsonl", b'{"prompt": "a", "completion": "b"}\n')}
        dashboard.client("alpha-dev").post("/files", files=upload, data={"purpose": "fine-tune"})
        approver = dashboard.client("alpha-approver")
        files = approver.get("/audit/entries", params={"object_type": "file"}).json()["data"]
        assert [e["action"] for e in files] == ["file.uploaded"]
        keys = approver.get("/audit/entries", params={"object_type": "api_key"}).json()["data"]
        assert keys and {e["object_type"] for e in keys} == {"api_key"}
