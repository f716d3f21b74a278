"""The jobs pages: in real Chromium a developer fills the new-job form, lands on the job's page and watches the
loss chart fill from the live stream without a reload until the job succeeds. Over HTTP: refusals show the API's
own message (a viewer's create, a bad hyperparameter kept in the form, cancelling a finished job), a forged form
is refused, another project's job and its stream answer 404, the list pages, and the stream stops when the
visitor leaves."""

from __future__ import annotations

import asyncio
import html
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from jobs_helpers import chat_lines
from markupsafe import escape
from web_helpers import accessibility_problems, dashboard_server, login, needs_browser, screenshot

from hone.web.core import ApiFailure
from hone.web.pages.jobs import job_request, job_updates, progress


@pytest.fixture(scope="module")
def dashboard(tiny_model_dir, tmp_path_factory):
    with dashboard_server(tiny_model_dir, tmp_path_factory.mktemp("web-jobs"), worker=True) as running:
        yield running


def _upload(dashboard, name: str, lines: list[str], key: str = "alpha-dev") -> str:
    answer = dashboard.client(key).post("/files", files={"file": (name, ("\n".join(lines) + "\n").encode())},
                                        data={"purpose": "fine-tune"})
    assert answer.status_code == 200, answer.text
    return answer.json()["id"]


def _failed_job(dashboard) -> str:
    """A job that fails at once (too few examples): finished, without costing a training run."""
    file_id = _upload(dashboard, "short.jsonl", chat_lines(3))
    job = dashboard.client("alpha-dev").post("/fine_tuning/jobs", json={"model": "tiny", "training_file": file_id})
    assert job.json()["status"] == "failed"
    return job.json()["id"]


def _logged_in(dashboard, key_name: str) -> httpx.Client:
    client = httpx.Client(base_url=dashboard.root, timeout=30)
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
    assert client.post("/login", data={"api_key": dashboard.keys[key_name], "csrf_token": token}).status_code == 303
    return client


def _csrf(client: httpx.Client, path: str = "/jobs/new") -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).text).group(1)


def _api_message(dashboard, key: str, body: dict) -> tuple[int, str]:
    """What the API itself answers to this create request."""
    answer = dashboard.client(key).post("/fine_tuning/jobs", json=body)
    return answer.status_code, answer.json()["error"]["message"]


@needs_browser
def test_create_a_job_from_the_form_and_watch_it_train_live(dashboard, page):
    train = _upload(dashboard, "animals-train.jsonl", chat_lines(12))
    valid = _upload(dashboard, "animals-valid.jsonl", chat_lines(10))
    login(page, dashboard, "alpha-dev", "/jobs/new")
    assert accessibility_problems(page) == []
    page.get_by_label("Base model").select_option("tiny")
    page.get_by_label("Training file").select_option(train)
    page.get_by_label("Validation file").select_option(valid)
    page.get_by_label("Method").select_option("lora")
    page.get_by_label("Epochs").fill("1")
    page.get_by_label("Batch size").fill("2")
    page.get_by_label("Suffix").fill("web")
    page.get_by_label("LoRA rank").fill("4")
    page.get_by_label("Eval loss every").fill("2")
    for setting in ("Evaluate the fine-tune", "Mix in general examples", "Record the run in MLflow"):
        page.get_by_label(setting).uncheck()  # FAST: each costs seconds
    screenshot(page, "jobs-new")
    page.get_by_role("button", name="Create job").click()
    page.wait_for_url(re.compile(r".*/jobs/ftjob-[A-Za-z0-9]+$"))
    job_id = page.url.rsplit("/", 1)[1]
    at_load = page.evaluate("JSON.parse(document.getElementById('job-live').textContent)")
    assert not at_load["state"]["finished"] and at_load["points"] == []  # what follows comes from the stream
    page.evaluate("window.marker = 'same page'")

    page.wait_for_function("Number(document.getElementById('point-count').dataset.points) > 0", timeout=90_000)
    page.wait_for_function("document.getElementById('job-status').dataset.status === 'succeeded'", timeout=90_000)
    assert page.evaluate("window.marker") == "same page"  # updated in place, never reloaded
    assert page.locator("#point-count").get_attribute("data-points") == "6"  # 12 examples / batch 2, each step
    assert page.locator("#job-status .badge").inner_text() == "succeeded"
    assert page.locator("#event-rows tr").first.inner_text().endswith("The job has successfully completed")
    assert page.locator("#checkpoint-rows tr").count() >= 1
    assert page.locator("#fine-tuned-model").inner_text().endswith(f":web:{job_id[-8:]}")
    assert page.locator("form[data-action=cancel]").is_hidden()  # nothing left to cancel
    screenshot(page, "jobs-job")
    assert accessibility_problems(page) == []

    points = dashboard.client("alpha-dev").get(f"/fine_tuning/jobs/{job_id}/metrics", params={"after_step": 3})
    assert [p["step"] for p in points.json()["data"]] == [4, 5, 6]
    assert points.json()["data"][-1]["valid_loss"] is not None  # eval loss at the end, with a validation file
    for bad in ({"after_step": -1}, {"limit": 0}, {"limit": "many"}):
        refused = dashboard.client("alpha-dev").get(f"/fine_tuning/jobs/{job_id}/metrics", params=bad)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == f"query.{next(iter(bad))}", bad

    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    screenshot(page, "jobs-job-phone")
    assert accessibility_problems(page) == []
    page.goto(f"{dashboard.root}/jobs")
    row = page.get_by_role("row").filter(has_text=job_id)
    assert "succeeded" in row.inner_text() and "web" in row.inner_text()
    screenshot(page, "jobs-list-phone")
    assert accessibility_problems(page) == []


def test_a_viewer_sees_the_form_disabled_and_a_forged_post_gets_the_api_403(dashboard):
    viewer = _logged_in(dashboard, "alpha-viewer")
    form = viewer.get("/jobs/new").text
    assert re.search(r'<button type="submit" disabled', form) and "may look at jobs but not create them" in form
    body = {"csrf_token": _csrf(viewer), "model": "tiny", "training_file": "file-x", "method": "lora"}
    status, message = _api_message(dashboard, "alpha-viewer", job_request(body))
    answer = viewer.post("/jobs", data=body)
    assert answer.status_code == status == 403 and str(escape(message)) in answer.text

    job_id = _failed_job(dashboard)
    job_page = viewer.get(f"/jobs/{job_id}").text
    assert "may watch this job but not cancel" in job_page
    assert job_page.count('disabled aria-describedby="control-note"') == 3
    answer = viewer.post(f"/jobs/{job_id}/cancel", data={"csrf_token": _csrf(viewer, "/jobs")})
    assert answer.status_code == 403 and str(escape(message)) in answer.text


def test_the_form_asks_for_the_method_as_openai_and_hone_name_it():
    dpo = job_request({"model": "tiny", "training_file": "file-a", "method": "dpo", "n_epochs": "2",
                       "batch_size": "auto", "learning_rate_multiplier": "0.5", "replay": "on"})
    assert dpo["method"] == {"type": "dpo", "dpo": {"hyperparameters": {
        "n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": 0.5}}}
    assert "method" not in dpo["hone"] and "replay" not in dpo["hone"]
    qlora = job_request({"model": "tiny", "training_file": "file-a", "method": "qlora", "lora_r": "8",
                         "validation_file": "", "suffix": " s1 "})
    assert qlora["method"] == {"type": "supervised", "supervised": {"hyperparameters": {}}}
    assert qlora["hone"] == {"method": "qlora", "lora": {"r": 8}, "replay": None, "eval": {"enabled": False},
                             "tracking": {"enabled": False}}
    assert "validation_file" not in qlora and qlora["suffix"] == "s1"


@pytest.mark.parametrize("epochs", ["0", "abc"])
def test_a_bad_hyperparameter_shows_the_api_message_in_the_form_with_the_values_kept(dashboard, epochs):
    train = _upload(dashboard, "form.jsonl", chat_lines(12))
    developer = _logged_in(dashboard, "alpha-dev")
    body = {"csrf_token": _csrf(developer), "model": "tiny", "training_file": train, "method": "dora",
            "n_epochs": epochs, "batch_size": "auto", "suffix": "kept-suffix"}
    status, message = _api_message(dashboard, "alpha-dev", job_request(body))
    answer = developer.post("/jobs", data=body)
    assert answer.status_code == status == 400 and str(escape(message)) in answer.text
    assert "n_epochs" in message
    assert 'value="kept-suffix"' in answer.text and f'value="{epochs}"' in answer.text
    assert re.search(rf'<option value="{train}" selected', answer.text)
    assert '<option value="dora" selected' in answer.text


def test_forged_forms_and_another_projects_job_get_nowhere(dashboard):
    job_id = _failed_job(dashboard)
    developer = _logged_in(dashboard, "alpha-dev")
    assert developer.post("/jobs", data={"csrf_token": "forged", "model": "tiny"}).status_code == 403
    assert developer.post(f"/jobs/{job_id}/cancel", data={"csrf_token": "forged"}).status_code == 403
    beta = _logged_in(dashboard, "beta-dev")
    for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/stream"):
        answer = beta.get(path)
        assert answer.status_code == 404 and "text/html" in answer.headers["content-type"]
        assert f"No fine-tuning job with id &#39;{job_id}&#39;" in answer.text and "/tmp" not in answer.text
    assert beta.get(f"/v1/fine_tuning/jobs/{job_id}/metrics").status_code == 404
    assert beta.post(f"/jobs/{job_id}/cancel", data={"csrf_token": _csrf(beta, "/jobs")}).status_code == 404
    assert job_id not in beta.get("/jobs").text


def test_cancelling_a_finished_job_shows_the_api_message(dashboard):
    job_id = _failed_job(dashboard)
    developer = _logged_in(dashboard, "alpha-dev")
    page = developer.get(f"/jobs/{job_id}").text
    assert re.search(r'data-action="cancel" hidden', page)  # a finished job offers no cancel button
    assert "fine-tuning needs at least 10" in page  # the failure's message
    answer = developer.post(f"/jobs/{job_id}/cancel", data={"csrf_token": _csrf(developer, "/jobs")})
    api = dashboard.client("alpha-dev").post(f"/fine_tuning/jobs/{job_id}/cancel").json()["error"]["message"]
    assert answer.status_code == 400 and str(escape(api)) in answer.text and "it cannot be canceled" in api


def test_the_stream_of_a_finished_job_sends_its_state_and_ends(dashboard):
    job_id = _failed_job(dashboard)
    developer = _logged_in(dashboard, "alpha-dev")
    with developer.stream("GET", f"/jobs/{job_id}/stream") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        text = "".join(stream.iter_text())
    names = re.findall(r"^event: (\w+)$", text, re.M)
    assert names[0] == "job" and names[-1] == "end" and '"status": "failed"' in text
    assert "fine-tuning needs at least 10" in text  # the failure's events reach the page


def test_the_list_pages_through_the_projects_jobs(dashboard):
    for _ in range(3):
        _failed_job(dashboard)
    developer = _logged_in(dashboard, "alpha-dev")
    first = developer.get("/jobs", params={"limit": 2}).text
    assert first.count('<td class="job-id">') == 2
    older = re.search(r'href="(/jobs\?after=[^"]+)" rel="next"', first).group(1)
    second = developer.get(html.unescape(older)).text
    assert developer.get("/jobs", params={"limit": 0}).status_code == 400  # the API's own limit check
    assert '<td class="job-id">' in second and set(re.findall(r"ftjob-\w+", first)).isdisjoint(
        re.findall(r"ftjob-\w+", second))


class RunningJob:
    """An API stub whose job runs forever, counting the reads the stream makes."""

    def __init__(self):
        self.reads = 0

    async def get(self, path: str, **params):
        self.reads += 1
        if path.endswith("/metrics"):
            return {"data": [], "has_more": False}
        if path.endswith(("/events", "/checkpoints")):
            return {"data": [], "has_more": False}
        return {"status": "running", "error": None}


def _collect(updates) -> list[str]:
    """Every chunk the stream sends, run on an event loop of its own (Playwright's holds this thread)."""
    async def chunks():
        return [chunk async for chunk in updates]

    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, chunks()).result(timeout=30)


def test_the_stream_stops_when_the_visitor_leaves_or_the_session_ends():
    api, polls = RunningJob(), []

    async def leaves_after_two_polls():
        polls.append(1)
        return len(polls) > 2

    sent = _collect(job_updates(api, "ftjob-x", None, None, leaves_after_two_polls))
    assert [chunk.split("\n")[0] for chunk in sent] == ["event: job", "event: checkpoints"]
    assert api.reads == 2 * 4  # two polls, then nothing more read

    class SessionEnded(RunningJob):
        async def get(self, path: str, **params):
            raise ApiFailure(401, "Your session has ended; log in again")

    async def stays():
        return False

    sent = _collect(job_updates(SessionEnded(), "ftjob-x", None, None, stays))
    assert sent == ['event: failure\ndata: {"status": 401, "message": "Your session has ended; log in again"}\n\n']


def test_a_stream_ends_by_itself_after_its_longest_life(monkeypatch):
    import hone.web.pages.jobs as jobs_page

    monkeypatch.setattr(jobs_page, "STREAM_MAX_S", 0.3)
    monkeypatch.setattr(jobs_page, "POLL_S", 0.05)
    api = RunningJob()

    async def stays():
        return False

    sent = _collect(job_updates(api, "ftjob-x", None, None, stays))  # a job that runs forever
    assert sent[0].startswith("event: job") and 4 <= api.reads <= 4 * 8  # the browser's EventSource reconnects


def test_the_eta_is_the_time_per_step_so_far_times_the_steps_left():
    point = {"step": 10, "total_steps": 40, "tokens": 1000, "tokens_per_s": 100.0}  # 10 s of training so far
    assert progress([point], "running")["eta"] == "about 30 s"
    assert progress([{**point, "total_steps": 250}], "running")["eta"] == "about 4 min"
    assert progress([{**point, "total_steps": 4000}], "running")["eta"] == "about 1 h 6 min"
    assert progress([point], "paused")["eta"] is None and progress([], "running")["eta"] is None
