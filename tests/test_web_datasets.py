"""The datasets section: upload a file through the form and see its broken lines by number; browse its examples
as the model sees them with the trained tokens highlighted; a prepared dataset version (made by `hone data
prepare`, PII and a duplicate in it) shows its curation report. Another project's files and versions answer 404
on /v1 and on the pages, a viewer cannot upload, a forged form is refused, paging is bounded, and no answer
shows a server path."""

from __future__ import annotations

import json
import re
from html import unescape

import httpx
import pytest
import yaml
from typer.testing import CliRunner
from web_helpers import accessibility_problems, dashboard_server, login, needs_browser, screenshot

from hone import audit
from hone.cli import app as cli
from hone.data.curate.prepare import PrepareConfig, prepare
from hone.data.versions import datasets_dir
from hone.store import engine_for, session


def _line(user: str, reply: str | None = None) -> str:
    messages = [{"role": "user", "content": user}] + ([{"role": "assistant", "content": reply}] if reply else [])
    return json.dumps({"messages": messages})


USER, REPLY = "What is the capital of France, tell me please?", "Paris is the capital of France."
# line 3 is not JSON, line 5 has no assistant reply
UPLOAD = "\n".join([_line(USER, REPLY), _line("How many legs does a spider have?", "A spider has eight legs."),
                    "{not json", _line("Name a primary colour.", "Red is a primary colour."),
                    _line("This one was never answered.")]) + "\n"
EMAIL = "bob.smith@example.com"
# a duplicate (line 3 = line 1), an email (line 2), a broken line (4) and a reply-less line (6)
PREPARE_INPUT = "\n".join([_line(USER, REPLY), _line(f"Email me at {EMAIL} about the order status today",
                                                     "I will send the order status to you by email today."),
                           _line(USER, REPLY), "not json at all",
                           _line("How many legs does a spider have in total?", "A spider has eight legs in total."),
                           _line("Nobody answered this question.")]) + "\n"


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("web-datasets")


@pytest.fixture(autouse=True)
def isolated_hone_home(module_dir, monkeypatch):
    """One HONE_HOME for the module's server and every test in it (the server reads files from it)."""
    monkeypatch.setenv("HONE_HOME", str(module_dir / "hone-home"))


@pytest.fixture(scope="module")
def dashboard(tiny_model_dir, module_dir):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HONE_HOME", str(module_dir / "hone-home"))
        with dashboard_server(tiny_model_dir, module_dir, worker=False) as running:
            yield running


@pytest.fixture(scope="module")
def prepared(dashboard, module_dir):
    """A dataset version of project alpha made by `hone data prepare` (PII NER off to stay fast), and a version
    that no project's audit log names."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HONE_HOME", str(module_dir / "hone-home"))
        source = module_dir / "support.jsonl"
        source.write_text(PREPARE_INPUT)
        config = module_dir / "prepare.yaml"
        config.write_text(yaml.safe_dump({
            "inputs": [{"path": str(source)}], "out": str(datasets_dir() / "support-v1"),
            "pii": {"ner_model": None}, "split": {"train": 1.0, "val": 0.0, "test": 0.0}}))
        answer = CliRunner().invoke(cli, ["data", "prepare", str(config), "--project", "alpha", "--db", dashboard.db,
                                          "--json"])
        assert answer.exit_code == 0, answer.output
        orphan = prepare(PrepareConfig(inputs=[{"path": str(source)}], out=datasets_dir() / "orphan", pii=None,
                                       dedup={"exact": False, "near": False}))
        return json.loads(answer.stdout)["dataset_id"], orphan["dataset_id"]


def _logged_in(dashboard, key_name: str) -> tuple[httpx.Client, str]:
    """A cookie session for the pages, and its CSRF token."""
    client = httpx.Client(base_url=dashboard.root, timeout=60)
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
    assert client.post("/login", data={"api_key": dashboard.keys[key_name], "csrf_token": token}).status_code == 303
    return client, re.search(r'name="csrf_token" value="([^"]+)"', client.get("/datasets").text).group(1)


def _upload(dashboard, name: str = "upload.jsonl", content: str = UPLOAD) -> str:
    answer = dashboard.client("alpha-dev").post("/files", files={"file": (name, content.encode())},
                                                data={"purpose": "fine-tune"})
    assert answer.status_code == 200, answer.text
    return answer.json()["id"]


def _trained_text(example: dict) -> str:
    return "".join(s["text"] for s in example["segments"] if s["trained"])


def _untrained_text(example: dict) -> str:
    return "".join(s["text"] for s in example["segments"] if not s["trained"])


@needs_browser
def test_upload_through_the_form_names_the_broken_lines_and_highlights_trained_tokens(dashboard, page, module_dir):
    upload = module_dir / "orders.jsonl"
    upload.write_text(UPLOAD)
    login(page, dashboard, "alpha-dev", "/datasets")
    assert accessibility_problems(page) == []
    screenshot(page, "datasets-list-before-upload")
    page.get_by_label("JSONL file").set_input_files(str(upload))
    page.get_by_role("button", name="Upload and check").click()
    page.wait_for_url(re.compile(r".*/datasets/files/file-[^/?]+$"))
    rows = page.locator("table.problems tbody tr")
    assert rows.count() == 2
    assert rows.nth(0).locator("td").nth(0).inner_text() == "3" and "not valid JSON" in rows.nth(0).inner_text()
    assert rows.nth(1).locator("td").nth(0).inner_text() == "5" and "assistant" in rows.nth(1).inner_text()
    assert "cannot train on this file" in page.locator("main").inner_text()
    marks = page.locator(".rendered mark.trained")
    assert marks.count() >= 3  # one reply per usable example (lines 1, 2 and 4)
    trained = " ".join(marks.all_inner_texts())
    assert REPLY in trained and "Red is a primary colour." in trained and USER not in trained
    assert USER in page.locator(".rendered").first.inner_text()
    assert "trained" in page.locator(".legend").inner_text()  # the highlight is explained in words
    assert accessibility_problems(page) == []
    screenshot(page, "datasets-file")
    page.set_viewport_size({"width": 390, "height": 844})
    assert accessibility_problems(page) == []
    screenshot(page, "datasets-file-phone")
    page.goto(f"{dashboard.root}/datasets")
    assert page.get_by_role("link", name="orders.jsonl").count() >= 1
    assert accessibility_problems(page) == []
    screenshot(page, "datasets-list-phone")


@needs_browser
def test_the_report_page_shows_the_curation_counts_and_pages_through_examples(dashboard, prepared, page):
    dataset_id, orphan_id = prepared
    login(page, dashboard, "alpha-viewer", "/datasets")
    assert page.get_by_role("link", name="support-v1").count() == 1
    assert page.get_by_role("link", name="orphan").count() == 0  # no project's audit log names it
    assert page.get_by_role("button", name="Upload and check").is_disabled()  # a viewer's key cannot upload
    assert accessibility_problems(page) == []
    screenshot(page, "datasets-list-viewer")
    page.get_by_role("link", name="support-v1").click()
    page.wait_for_url(f"**/datasets/{dataset_id}")
    pii = page.locator("table.pii tbody tr")
    assert pii.count() == 1 and pii.first.locator("td").all_inner_texts() == ["EMAIL_ADDRESS", "1", "1"]
    assert page.locator("dl.duplicates dd").all_inner_texts() == ["1", "0"]  # exact, near
    counts = dict(zip(page.locator("dl.counts dt").all_inner_texts(), page.locator("dl.counts dd").all_inner_texts(),
                      strict=True))
    assert counts == {"Ingested": "4", "Broken lines": "2", "Train": "3", "Val": "0", "Test": "0"}
    broken = [row.locator("td").nth(1).inner_text() for row in page.locator("table.problems tbody tr").all()]
    assert broken == ["4", "6"]
    assert "too small" in page.locator("dl.facts").first.inner_text()
    steps = page.locator("table.steps tbody tr td:first-child").all_inner_texts()
    assert steps == ["clean", "pii", "exact_dedup", "near_dedup", "quality"]
    assert page.locator(".rendered mark.trained").count() == 3
    assert "<EMAIL_ADDRESS>" in page.locator("main").inner_text() and EMAIL not in page.content()
    assert accessibility_problems(page) == []
    screenshot(page, "datasets-version")


def test_another_projects_file_and_dataset_answer_404_on_the_api_and_the_pages(dashboard, prepared):
    dataset_id, orphan_id = prepared
    file_id = _upload(dashboard)
    beta = dashboard.client("beta-dev")
    for path in (f"/files/{file_id}", f"/datasets/files/{file_id}/examples", f"/datasets/{dataset_id}",
                 f"/datasets/{dataset_id}/examples", f"/datasets/{orphan_id}", "/datasets/..%2F..%2Fetc",
                 f"/datasets/{dataset_id.upper()}"):
        answer = beta.get(path)
        assert answer.status_code == 404, path
        assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
    assert beta.get("/datasets").json()["data"] == []
    assert dashboard.client("alpha-viewer").get(f"/datasets/{orphan_id}").status_code == 404
    # a record naming a folder outside the datasets folder is never followed
    with session(engine_for(dashboard.db)) as db:
        audit.record(db, project="beta", actor="test", action="dataset.prepared", object_type="dataset",
                     object_id=dataset_id, details={"out": "../datasets/support-v1"})
    assert beta.get(f"/datasets/{dataset_id}").status_code == 404
    pages, _ = _logged_in(dashboard, "beta-dev")
    for path in (f"/datasets/files/{file_id}", f"/datasets/{dataset_id}"):
        answer = pages.get(path)
        assert answer.status_code == 404 and "No such" in answer.text and dataset_id[:12] not in answer.text.split(
            "No such")[0]
    assert file_id not in pages.get("/datasets").text


def test_a_viewer_cannot_upload_and_a_forged_form_is_refused(dashboard):
    refused = dashboard.client("alpha-viewer").post("/files", files={"file": ("x.jsonl", UPLOAD.encode())},
                                                    data={"purpose": "fine-tune"})
    assert refused.status_code == 403
    viewer, token = _logged_in(dashboard, "alpha-viewer")
    assert "Uploading needs the developer role" in viewer.get("/datasets").text
    answer = viewer.post("/datasets/upload", data={"csrf_token": token},
                         files={"file": ("viewer.jsonl", UPLOAD.encode())})
    assert answer.status_code == 403 and refused.json()["error"]["message"] in unescape(answer.text)
    developer, _ = _logged_in(dashboard, "alpha-dev")
    forged = developer.post("/datasets/upload", data={"csrf_token": "forged"},
                            files={"file": ("forged.jsonl", UPLOAD.encode())})
    assert forged.status_code == 403 and "CSRF token does not match" in forged.text
    names = [f["filename"] for f in dashboard.client("alpha-admin").get("/files").json()["data"]]
    assert "viewer.jsonl" not in names and "forged.jsonl" not in names


def test_examples_are_rendered_with_the_trained_reply_and_paged_within_limits(dashboard, prepared):
    dataset_id, _ = prepared
    alpha = dashboard.client("alpha-viewer")
    first = alpha.get(f"/datasets/{dataset_id}/examples", params={"limit": 2}).json()
    assert (first["total"], first["has_more"], [e["index"] for e in first["data"]]) == (3, True, [0, 1])
    example = first["data"][0]
    assert REPLY in _trained_text(example) and USER in _untrained_text(example) and USER not in _trained_text(example)
    assert example["trained_tokens"] > 0 and example["line"] == 1
    rest = alpha.get(f"/datasets/{dataset_id}/examples", params={"limit": 2, "offset": 2}).json()
    assert ([e["index"] for e in rest["data"]], rest["has_more"]) == ([2], False)
    assert rest["data"][0]["line"] == 5  # the input line, past the duplicate and the broken line
    for params, param in (({"limit": 51}, "limit"), ({"limit": 0}, "limit"), ({"offset": -1}, "offset"),
                          ({"split": "everything"}, "query.split")):
        refused = alpha.get(f"/datasets/{dataset_id}/examples", params=params)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == param, params
    assert alpha.get(f"/datasets/{dataset_id}/examples", params={"split": "val"}).json()["data"] == []
    pages, _ = _logged_in(dashboard, "alpha-viewer")
    bad = pages.get(f"/datasets/{dataset_id}", params={"offset": -1})
    assert bad.status_code == 400 and "offset -1 is negative" in bad.text
    paged = pages.get(f"/datasets/{dataset_id}", params={"offset": 0}).text
    assert "Examples 1–3 of 3" in paged and 'rel="next"' not in paged
    many = _upload(dashboard, "many.jsonl", "".join(_line(f"Question {n}?", f"Answer {n}.") + "\n" for n in range(12)))
    first_page = pages.get(f"/datasets/files/{many}").text
    assert "Examples 1–10 of 12" in first_page and 'rel="prev"' not in first_page
    following = re.search(r'href="([^"]+)" rel="next"', first_page).group(1)
    second_page = pages.get(unescape(following)).text
    assert "Examples 11–12 of 12" in second_page and "Answer 11." in second_page and 'rel="prev"' in second_page


def test_no_answer_shows_a_server_path(dashboard, prepared, module_dir):
    dataset_id, _ = prepared
    file_id = _upload(dashboard, "paths.jsonl")
    # the fix-it commands for a UTF-16 file and a JSON array name the upload, not where the server keeps it
    utf16 = dashboard.client("alpha-dev").post("/files", files={"file": ("wide.jsonl", UPLOAD.encode("utf-16"))},
                                               data={"purpose": "fine-tune"}).json()["id"]
    array = _upload(dashboard, "array.jsonl", json.dumps([json.loads(_line(USER, REPLY))]))
    api = dashboard.client("alpha-viewer")
    pages, _ = _logged_in(dashboard, "alpha-viewer")
    answers = [api.get(path) for path in ("/datasets", f"/datasets/{dataset_id}", f"/datasets/{dataset_id}/examples",
                                          f"/datasets/files/{file_id}/examples", f"/files/{utf16}/problems",
                                          f"/files/{array}/problems", f"/datasets/files/{utf16}/examples")]
    answers += [pages.get(path) for path in ("/datasets", f"/datasets/{dataset_id}", f"/datasets/files/{file_id}",
                                             f"/datasets/files/{utf16}", f"/datasets/files/{array}")]
    assert "iconv -f UTF-16 -t UTF-8 wide.jsonl > wide.utf8.jsonl" in answers[4].json()["data"][0]["message"]
    assert "jq -c '.[]' array.jsonl > array.lines.jsonl" in answers[5].json()["data"][0]["message"]
    report = answers[1].json()
    assert report["inputs"][0]["name"] == "support.jsonl" and report["broken_lines"][0]["input"] == "support.jsonl"
    assert report["removed"][0]["detail"] == "same text as support.jsonl:1"
    for answer in answers:
        assert answer.status_code == 200
        assert str(module_dir) not in answer.text and "/tmp/" not in answer.text and "hone-home" not in answer.text
