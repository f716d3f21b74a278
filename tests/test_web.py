"""The dashboard's door: logging in with an API key gives an HttpOnly session cookie; the cookie works on the /v1
API only with the session's CSRF token for changes; a wrong key, a revoked key, a forged form or a redirect to
another site get nowhere; errors show the API's message and no server path. In real Chromium: log in, see the
overview, pass the accessibility check."""

from __future__ import annotations

import html
import re

import httpx
import pytest
from web_helpers import accessibility_problems, dashboard_server, login, needs_browser, screenshot

from hone.api.keys import KeyStore


@pytest.fixture
def dashboard(tiny_model_dir, tmp_path):
    with dashboard_server(tiny_model_dir, tmp_path, worker=False) as running:
        yield running


def _login_token(client: httpx.Client) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)


def _logged_in(dashboard, key_name: str) -> httpx.Client:
    client = httpx.Client(base_url=dashboard.root)
    answer = client.post("/login", data={"api_key": dashboard.keys[key_name], "csrf_token": _login_token(client)})
    assert answer.status_code == 303
    return client


def test_login_sets_an_httponly_session_cookie_and_a_wrong_key_gets_the_api_message(dashboard):
    client = httpx.Client(base_url=dashboard.root)
    assert client.get("/").headers["location"] == "/login?next=/"
    wrong = client.post("/login", data={"api_key": "sk-hone-wrong", "csrf_token": _login_token(client)})
    assert wrong.status_code == 401 and "Incorrect API key provided" in wrong.text
    answer = client.post("/login", data={"api_key": dashboard.keys["alpha-dev"], "csrf_token": _login_token(client),
                                         "next": "/jobs"})
    assert answer.status_code == 303 and answer.headers["location"] == "/jobs"
    cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith("hone_session="))
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and dashboard.keys["alpha-dev"] not in cookie
    overview = client.get("/")
    assert overview.status_code == 200 and "alpha-dev (developer)" in overview.text
    assert "default-src 'self'" in overview.headers["content-security-policy"]


def test_a_login_form_without_its_token_and_a_redirect_to_another_site_are_refused(dashboard):
    client = httpx.Client(base_url=dashboard.root)
    forged = client.post("/login", data={"api_key": dashboard.keys["alpha-dev"], "csrf_token": "forged"})
    assert forged.status_code == 403 and "hone_session" not in forged.headers.get("set-cookie", "")
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        answer = client.post("/login", data={"api_key": dashboard.keys["alpha-dev"],
                                             "csrf_token": _login_token(client), "next": target})
        assert answer.headers["location"] == "/"


def test_the_cookie_calls_the_api_but_changes_need_the_csrf_token(dashboard):
    client = _logged_in(dashboard, "alpha-dev")
    assert client.get("/v1/files").json()["data"] == []
    upload = {"file": ("a.jsonl", b'{"prompt": "a", "completion": "b"}\n')}
    refused = client.post("/v1/files", files=upload, data={"purpose": "fine-tune"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf_failed"
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/").text).group(1)
    accepted = client.post("/v1/files", files=upload, data={"purpose": "fine-tune"}, headers={"X-CSRF-Token": csrf})
    assert accepted.status_code == 200 and accepted.json()["filename"] == "a.jsonl"
    # another project's session sees none of it
    assert _logged_in(dashboard, "beta-dev").get("/v1/files").json()["data"] == []


def test_logging_out_or_revoking_the_key_ends_the_session(dashboard):
    client = _logged_in(dashboard, "alpha-dev")
    page = client.get("/")
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)
    assert client.post("/logout", data={"csrf_token": "forged"}).status_code == 403
    assert client.post("/logout", data={"csrf_token": csrf}).headers["location"] == "/login"
    assert client.get("/v1/files").status_code == 401

    viewer = _logged_in(dashboard, "alpha-viewer")
    keys = KeyStore(dashboard.db)
    keys.revoke("alpha-viewer")
    assert viewer.get("/").headers["location"] == "/login?next=/"
    assert viewer.get("/v1/files").json()["error"]["code"] == "session_expired"
    # a new key given the revoked key's name (a rotation) does not bring the old session back, in any project
    keys.create("alpha-viewer", project="beta", role="admin")
    assert viewer.get("/v1/files").json()["error"]["code"] == "session_expired"


def test_unknown_pages_and_refusals_show_no_server_path(dashboard):
    client = _logged_in(dashboard, "alpha-dev")
    missing = client.get("/no/such/page")
    assert missing.status_code == 404 and "text/html" in missing.headers["content-type"]
    assert "/tmp" not in missing.text and "Traceback" not in missing.text
    assert client.get("/v1/no/such/route").headers["content-type"].startswith("application/json")


@needs_browser
def test_log_in_in_a_real_browser_and_see_the_overview(dashboard, page):
    login(page, dashboard, "alpha-dev")
    assert page.get_by_role("heading", name="Project alpha").is_visible()
    assert page.get_by_role("link", name="Jobs").first.is_visible()
    screenshot(page, "overview")
    assert accessibility_problems(page) == []
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    screenshot(page, "overview-phone")
    assert accessibility_problems(page) == []
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(re.compile(r".*/login$"))
    assert accessibility_problems(page) == []


def test_a_server_without_keys_opens_a_session_only_on_a_click(tiny_model_dir, tmp_path):
    from conftest import serve_app

    from hone.api.app import create_app
    from hone.audit import entries
    from hone.serve.config import ServeConfig

    db = f"sqlite:///{tmp_path / 'open.db'}"
    config = ServeConfig(base=str(tiny_model_dir), base_id="tiny", dtype="fp32", threads=1, database=db,
                         jobs={"worker": False})
    with serve_app(create_app(config)) as url:
        client = httpx.Client(base_url=url.removesuffix("/v1"))
        for _ in range(3):  # crawlers and probes following the redirect open nothing
            form = client.get("/login")
            assert "needs no API key" in form.text and "hone_session" not in form.headers.get("set-cookie", "")
        assert entries(10, None, db, action="session.opened") == []
        opened = client.post("/login", data={"csrf_token": _login_token(client), "next": "/jobs"})
        assert opened.status_code == 303 and opened.headers["location"] == "/jobs"
        assert "open access (developer)" in client.get("/").text
        assert len(entries(10, None, db, action="session.opened")) == 1


def test_a_form_field_sent_twice_is_refused_not_a_crash(dashboard):
    client = _logged_in(dashboard, "alpha-dev")
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/").text).group(1)
    doubled = client.post("/review", data={"csrf_token": csrf, "name": ["a", "b"]})
    assert doubled.status_code == 400 and "'name' was sent 2 times" in html.unescape(doubled.text)
