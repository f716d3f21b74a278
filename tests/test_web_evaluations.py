"""The evaluations pages and /v1/evaluations on a real evaluation: a fine-tuning job on the tiny model evaluates
its fine-tune after training (base, 3-shot, RAG and the fine-tune on 6 held-out examples, 3 forgetting probes).
As a viewer in Chromium: the list, the verdict with its reasons, the candidates with 95% CIs, the charts, the
example browser with its filters and reply diffs. Over HTTP: another project's keys get 404, a bad filter or
page size gets 400 naming the parameter, and no answer shows a server path."""

from __future__ import annotations

import re

import pytest
from jobs_helpers import FAST, chat_lines, wait_for
from web_helpers import accessibility_problems, dashboard_server, login, needs_browser, screenshot

SERVER_PATH = re.compile(r"/(?:tmp|home|root|work|var|usr)/")


@pytest.fixture(scope="module")
def evaluated(tiny_model_dir, tmp_path_factory):
    """A dashboard whose alpha project has one version with its evaluation after training; (dashboard, id)."""
    home = tmp_path_factory.mktemp("evaluations")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HONE_HOME", str(home / "hone-home"))
        with dashboard_server(tiny_model_dir, home) as dashboard:
            developer = dashboard.client("alpha-dev")
            uploaded = developer.post("/files", files={"file": ("animals.jsonl", "\n".join(chat_lines(40)) + "\n")},
                                      data={"purpose": "fine-tune"}).json()
            hone = FAST | {"eval": {"enabled": True, "max_examples": 6, "probe_limit": 3}}
            job = developer.post("/fine_tuning/jobs", json={
                "model": "tiny", "training_file": uploaded["id"], "suffix": "animals",
                "hyperparameters": {"n_epochs": 1, "batch_size": 8}, "hone": hone}).json()
            assert "id" in job, job
            done = wait_for(lambda: (found := developer.get(f"/fine_tuning/jobs/{job['id']}").json())["status"]
                            in ("succeeded", "failed") and found, seconds=240, every=0.5)
            assert done["status"] == "succeeded", done.get("error")
            listed = developer.get("/evaluations").json()["data"]
            assert len(listed) == 1, listed
            yield dashboard, listed[0]["id"]



def _all_examples(client, evaluation_id: str, which: str) -> dict:
    answer = client.get(f"/evaluations/{evaluation_id}/examples", params={"filter": which, "limit": 100})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_the_report_has_every_candidate_with_cis_the_verdict_with_reasons_and_forgetting(evaluated):
    dashboard, evaluation_id = evaluated
    viewer = dashboard.client("alpha-viewer")
    [listed] = viewer.get("/evaluations").json()["data"]
    assert listed["id"] == evaluation_id and listed["against"] is None and listed["report_available"]
    assert listed["version"].startswith("ft:tiny:alpha:animals:") and listed["model"] == "animals"
    report = viewer.get(f"/evaluations/{evaluation_id}").json()
    assert [c["name"] for c in report["candidates"]] == ["base", "3-shot", "rag", "fine-tuned"]
    assert (report["candidate"], report["baseline"], report["examples"]) == ("fine-tuned", "base", 6)
    assert report["verdict"] == report["decision"]["decision"] == listed["verdict"]
    assert report["reasons"] == report["decision"]["reasons"] and report["reasons"]
    primary = next(row for row in report["metrics"] if row["metric"] == report["primary_metric"])
    for value in primary["values"].values():
        assert value["ci_low"] <= value["value"] <= value["ci_high"]
    perplexity = next(row for row in report["metrics"] if row["metric"] == "perplexity")
    assert all(v["ci_low"] < v["ci_high"] for v in perplexity["values"].values())  # a real interval, not a point
    change = next(row for row in report["deltas"] if row["metric"] == "perplexity")["changes"]["fine-tuned"]
    assert change["ci_low"] <= change["delta"] <= change["ci_high"]
    assert set(report["forgetting"]["models"]) == {"base", "fine-tuned"} and report["forgetting"]["probes"] == 3


def test_example_filters_count_what_they_keep_and_page(evaluated):
    dashboard, evaluation_id = evaluated
    viewer = dashboard.client("alpha-viewer")
    everything = _all_examples(viewer, evaluation_id, "all")
    assert everything["total"] == len(everything["data"]) == 6
    wrong = _all_examples(viewer, evaluation_id, "wrong")
    assert wrong["total"] == sum(e["outputs"]["fine-tuned"]["right"] is False for e in everything["data"])
    disagree = _all_examples(viewer, evaluation_id, "disagree")
    metric = viewer.get(f"/evaluations/{evaluation_id}").json()["outcome_metric"]
    assert disagree["total"] == sum(e["outputs"]["fine-tuned"]["scores"][metric]
                                    != e["outputs"]["base"]["scores"][metric] for e in everything["data"])
    assert _all_examples(viewer, evaluation_id, "judge_disagree")["total"] == 0  # no judge in this evaluation
    page = viewer.get(f"/evaluations/{evaluation_id}/examples", params={"offset": 4, "limit": 4}).json()
    assert [e["index"] for e in page["data"]] == [e["index"] for e in everything["data"][4:]]
    assert page["has_more"] is False and page["total"] == 6
    first = everything["data"][0]
    assert first["prompt"][0]["role"] == "user" and first["reference"].startswith('{"animal"')


def test_bad_parameters_get_400_naming_them_and_another_project_gets_404(evaluated):
    dashboard, evaluation_id = evaluated
    viewer = dashboard.client("alpha-viewer")
    examples = f"/evaluations/{evaluation_id}/examples"
    for params, named in (({"filter": "everything"}, "filter"), ({"limit": 101}, "limit"), ({"offset": -1}, "offset")):
        answer = viewer.get(examples, params=params)
        assert answer.status_code == 400 and named in answer.json()["error"]["param"], answer.text
    for key in ("beta-admin", "beta-dev"):
        beta = dashboard.client(key)
        assert beta.get("/evaluations").json()["data"] == []
        for path in (f"/evaluations/{evaluation_id}", examples):
            answer = beta.get(path)
            assert answer.status_code == 404 and answer.json()["error"]["code"] == "evaluation_not_found"
    for hostile in ("eval-0", "eval-99999", "1", "eval-1x", "..%2F..%2Fetc%2Fpasswd", "eval-" + "9" * 40):
        assert viewer.get(f"/evaluations/{hostile}").status_code == 404


def test_no_answer_or_page_shows_a_server_path(evaluated):
    dashboard, evaluation_id = evaluated
    viewer = dashboard.client("alpha-viewer")
    answers = [viewer.get(path, params=params).text for path, params in (
        ("/evaluations", {}), (f"/evaluations/{evaluation_id}", {}),
        *((f"/evaluations/{evaluation_id}/examples", {"filter": f, "limit": 100})
          for f in ("all", "wrong", "disagree", "judge_disagree")))]
    pages = _page_client(dashboard, "alpha-viewer")
    answers += [pages.get("/evaluations").text, pages.get(f"/evaluations/{evaluation_id}").text]
    for text in answers:
        assert not SERVER_PATH.search(text), SERVER_PATH.search(text)
        assert "report.json" not in text and "run_dir" not in text


def _page_client(dashboard, key_name: str):
    import httpx

    client = httpx.Client(base_url=dashboard.root, timeout=60)
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
    answer = client.post("/login", data={"api_key": dashboard.keys[key_name], "csrf_token": token})
    assert answer.status_code == 303
    return client


def test_another_projects_evaluation_page_is_404_with_the_api_message(evaluated):
    dashboard, evaluation_id = evaluated
    beta = _page_client(dashboard, "beta-dev")
    answer = beta.get(f"/evaluations/{evaluation_id}")
    assert answer.status_code == 404 and f"The evaluation &#39;{evaluation_id}&#39; does not exist" in answer.text
    assert "No evaluation yet" in beta.get("/evaluations").text
    assert "No human review yet" in _page_client(dashboard, "alpha-dev").get(f"/evaluations/{evaluation_id}").text
    bad = _page_client(dashboard, "alpha-viewer").get(f"/evaluations/{evaluation_id}", params={"filter": "nope"})
    assert bad.status_code == 400 and "filter" in bad.text


def test_reply_diffs_escape_the_text_before_marking_words():
    from hone.web.pages.evaluations import word_diff

    marked = str(word_diff("the cat <b>sat</b>", "the dog <b>sat</b> & ran"))
    assert marked == "the <del>cat</del><ins>dog</ins> &lt;b&gt;sat&lt;/b&gt;<ins> &amp; ran</ins>"
    assert str(word_diff(None, "<script>x</script>")) == "<ins>&lt;script&gt;x&lt;/script&gt;</ins>"


@needs_browser
def test_a_viewer_compares_the_candidates_and_browses_the_wrong_examples(evaluated, page):
    dashboard, evaluation_id = evaluated
    viewer = dashboard.client("alpha-viewer")
    report = viewer.get(f"/evaluations/{evaluation_id}").json()
    wrong_total = viewer.get(f"/evaluations/{evaluation_id}/examples", params={"filter": "wrong"}).json()["total"]

    login(page, dashboard, "alpha-viewer", "/evaluations")
    assert page.get_by_role("cell", name="the base model").is_visible()
    screenshot(page, "evaluations-list")
    assert accessibility_problems(page) == []
    page.get_by_role("link", name=evaluation_id).click()
    page.wait_for_url(f"**/evaluations/{evaluation_id}")

    verdict = page.locator("#verdict-h")
    assert report["verdict"] in verdict.inner_text()
    reasons = page.locator("ul.reasons li").all_inner_texts()
    assert reasons == report["reasons"]
    table = page.get_by_role("table", name="Metric by candidate: value and 95% CI")
    assert table.locator("thead th").all_inner_texts()[1:] and "fine-tuned" in table.inner_text()
    assert re.search(r"\d+\.\d+ \[\d+\.\d+, \d+\.\d+\]", table.inner_text())  # a value with its CI
    assert page.locator("figure.chart svg").count() >= 2  # changes with CIs, forgetting
    review = page.locator("[data-section=human-review]")
    assert review.is_visible() and review.locator("p").count() == 1  # no review yet, or why a viewer sees none
    assert page.locator("article.example").count() == min(6, 10)
    assert page.locator("article.example pre.diff").count() >= 6

    page.get_by_role("link", name="Wrong only").click()
    page.wait_for_url("**filter=wrong**")
    assert int(page.locator("[data-example-total]").inner_text()) == wrong_total
    assert page.locator("article.example").count() == min(wrong_total, 10)
    assert page.get_by_label("Show").input_value() == "wrong"
    screenshot(page, "evaluations-report")
    assert accessibility_problems(page) == []

    page.get_by_label("Highlight differences from").select_option("baseline")
    page.get_by_role("button", name="Show examples").click()
    page.wait_for_url("**diff=baseline**")
    assert "filter=wrong" in page.url and "base's reply" in page.locator(".legend").inner_text()
    page.set_viewport_size({"width": 390, "height": 844})
    screenshot(page, "evaluations-report-phone")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing overflows a phone's width
    assert accessibility_problems(page) == []



def test_an_evaluation_whose_report_left_the_disk_still_lists_with_its_verdict(evaluated):
    from hone.eval.records import get_evaluation

    dashboard, evaluation_id = evaluated
    report_path = get_evaluation("alpha", evaluation_id, dashboard.db).report_path
    moved = report_path.with_name("report.json.away")
    report_path.rename(moved)
    try:
        viewer = dashboard.client("alpha-viewer")
        [listed] = viewer.get("/evaluations").json()["data"]
        assert listed["report_available"] is False and listed["verdict"]
        shown = viewer.get(f"/evaluations/{evaluation_id}").json()
        assert shown["verdict"] == listed["verdict"] and shown["metrics"] == [] and shown["reasons"]
        gone = viewer.get(f"/evaluations/{evaluation_id}/examples")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "report_not_found"
        page = _page_client(dashboard, "alpha-viewer").get(f"/evaluations/{evaluation_id}")
        assert page.status_code == 200 and "no longer on the server" in page.text
        assert not SERVER_PATH.search(gone.text + page.text)
    finally:
        moved.rename(report_path)


def _reply(exact: float, judge: float | None = None) -> dict:
    return {"text": "x", "scores": {"exact_match": exact, "judge_score": judge}}


def test_the_filters_keep_wrong_replies_disagreements_and_judge_contradictions():
    from hone.eval.browse import matching_examples

    scores = [(100, 0, None), (0, 100, None), (0, 0, 5), (100, 100, 1), (0, 0, None)]  # tuned, base, rubric
    report = {"baseline": "base", "candidates": [{"name": "base"}, {"name": "tuned"}],
              "verdict": {"candidate": "tuned", "primary_metric": "exact_match"},
              "judge": {"status": "ok", "pairwise": {"tuned": {"outcomes": ["loss", "win", None, None, "tie"]}}},
              "examples": [{"index": i, "outputs": {"tuned": _reply(t, r), "base": _reply(b)}}
                           for i, (t, b, r) in enumerate(scores)]}

    def kept(which: str) -> list[int]:
        return [e["index"] for e in matching_examples(report, which)]

    assert kept("all") == [0, 1, 2, 3, 4]
    assert kept("wrong") == [1, 2, 4]
    assert kept("disagree") == [0, 1]
    # 0: lost where the metric says better; 1: won where worse; 2: rubric 5 for a wrong reply; 3: 1 for a right one
    assert kept("judge_disagree") == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="filter must be one of"):
        matching_examples(report, "everything")
