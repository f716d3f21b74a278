"""A project's dashboard never shows another project's objects: project alpha uploads, trains, registers and
serves; then every page of the dashboard, visited with project beta's session, holds none of alpha's ids, and each
of alpha's object pages answers 404 to beta. The test walks the app's own list of page routes, so a new page that
this test does not visit fails it."""

from __future__ import annotations

import re

import httpx
import pytest
from jobs_helpers import FAST, chat_lines, wait_for
from web_helpers import dashboard_server

from hone.web.core import path_part

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def alpha_world(tiny_model_dir, tmp_path_factory):
    """A server where project alpha has a file, a succeeded job, its registered version and captured traffic."""
    with dashboard_server(tiny_model_dir, tmp_path_factory.mktemp("isolation")) as dashboard:
        alpha = dashboard.client("alpha-dev")
        data = ("\n".join(chat_lines(12)) + "\n").encode()
        file_id = alpha.post("/files", files={"file": ("alpha-secret.jsonl", data)},
                             data={"purpose": "fine-tune"}).json()["id"]
        job = alpha.post("/fine_tuning/jobs", json={"model": "tiny", "training_file": file_id, "suffix": "alphaonly",
                                                    "hone": FAST}).json()
        done = wait_for(lambda: (found := alpha.get(f"/fine_tuning/jobs/{job['id']}").json())["status"]
                        in ("succeeded", "failed") and found, seconds=180)
        assert done["status"] == "succeeded", done
        for _ in range(2):
            assert alpha.post("/chat/completions", json=CHAT).status_code == 200
        version = alpha.get("/registry/models").json()["data"][0]
        yield dashboard, {"file": file_id, "job": job["id"], "model": done["fine_tuned_model"],
                          "version": version}


def _session(dashboard, key_name: str) -> httpx.Client:
    client = httpx.Client(base_url=dashboard.root, timeout=60)
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
    assert client.post("/login", data={"api_key": dashboard.keys[key_name], "csrf_token": token}).status_code == 303
    return client


def _page_routes() -> set[str]:
    """Every GET page the dashboard serves: its own routes and each section's (not the login form)."""
    from fastapi.routing import APIRoute

    from hone.web import pages
    from hone.web.app import router as door

    routers = [door, *(page.router for page in pages.ALL)]
    return {route.path for router in routers for route in router.routes
            if isinstance(route, APIRoute) and "GET" in route.methods} - {"/login"}


def test_no_page_shows_another_projects_objects_and_alphas_pages_are_404_to_beta(alpha_world):
    dashboard, alpha = alpha_world
    model, version = alpha["version"]["model"], alpha["version"]["version"]
    secrets = [alpha["file"], alpha["job"], alpha["model"], "alpha-secret", "alphaonly", "alpha-dev"]
    lists = ["/", "/datasets", "/jobs", "/jobs/new", "/evaluations", "/registry", "/monitoring", "/playground",
             "/review", "/audit"]
    alphas = {
        f"/datasets/files/{alpha['file']}": "/datasets/files/{file_id}",
        f"/jobs/{alpha['job']}": "/jobs/{job_id}",
        f"/jobs/{alpha['job']}/stream": "/jobs/{job_id}/stream",
        f"/registry/{path_part(model)}/{version}": "/registry/{model}/{version}",
        f"/registry/{path_part(model)}/{version}/card": "/registry/{model}/{version}/card",
        f"/registry/{path_part(model)}/{version}/document": "/registry/{model}/{version}/document",
        f"/monitoring/{path_part(alpha['model'])}": "/monitoring/{model}",
    }
    # alpha's own session sees its objects on those pages: the 404s below are about the project, not broken pages
    own = _session(dashboard, "alpha-admin")
    for path in [*lists, *alphas]:
        if path.endswith("/stream"):
            continue
        answer = own.get(path)
        assert answer.status_code == 200, (path, answer.status_code)
    assert alpha["file"] in own.get("/datasets").text and alpha["job"] in own.get("/jobs").text

    beta = _session(dashboard, "beta-admin")
    for path in lists:
        answer = beta.get(path)
        assert answer.status_code == 200, (path, answer.status_code)
        leaked = [secret for secret in secrets if secret in answer.text]
        assert leaked == [], f"{path} shows project alpha's {leaked}"
    for path in alphas:
        answer = beta.get(path)
        assert answer.status_code == 404, (path, answer.status_code)
        # the name asked for is echoed in the message, nothing more of alpha's
        assert not [secret for secret in ("alpha-secret", "alpha-dev") if secret in answer.text]

    # ids that only exist in one project: evaluations, datasets and review rounds answer 404 like unknown ones
    for path in ("/evaluations/eval-1", "/datasets/" + "0" * 64, "/review/review-nosuchround",
                 "/review/review-nosuchround/results",
                 f"/review/review-nosuchround/exported?corrections={alpha['file']}"):
        assert beta.get(path).status_code == 404, path

    visited = set(alphas.values()) | set(lists) | {"/evaluations/{evaluation_id}", "/datasets/{dataset_id}",
                                                   "/review/{review_id}", "/review/{review_id}/results",
                                                   "/review/{review_id}/exported"}
    routes = _page_routes()
    assert len(routes) > 15 and routes - visited == set(), "a dashboard page this test does not visit"


def test_another_projects_forms_change_nothing(alpha_world):
    dashboard, alpha = alpha_world
    beta = _session(dashboard, "beta-admin")
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', beta.get("/").text).group(1)
    model, version = alpha["version"]["model"], alpha["version"]["version"]
    for path, form in ((f"/jobs/{alpha['job']}/cancel", {}),
                       (f"/registry/{path_part(model)}/{version}/promote", {"alias": "champion"})):
        answer = beta.post(path, data={"csrf_token": csrf, **form})
        assert answer.status_code == 404, (path, answer.status_code, answer.text[:300])
    history = dashboard.client("alpha-admin").get(f"/registry/models/{path_part(model)}/history").json()
    assert history["data"] == []
