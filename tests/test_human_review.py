"""Human review: kappa against textbook examples, win rates with ties counted half, the blinded per-reviewer order
(stable, sides varying, repeats later with the sides swapped), reviewer items that never name a candidate, and the
store on a real SQLite file: rounds from an evaluation and from shadow traffic, judgments replaced and audited,
results, and the export's chat and DPO files as hone reads them."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from hone.audit.log import entries
from hone.data.formats import read_dataset
from hone.errors import ConflictError, NotFoundError, RequestError
from hone.eval.human_review import (
    ReviewStore,
    candidate_results,
    cohens_kappa,
    fleiss_kappa,
    outcome_of,
    reviewer_order,
    reviewer_seed,
    summarize,
    training_lines,
)
from hone.jobs.files import FileStore
from hone.registry.versions import Registry
from hone.store import session
from hone.store.tables import CapturedRequest, VersionEvaluation

FIRST, SECOND = "basemodel-x1", "tuned-x2"  # names that must never reach a reviewer


def eval_report(examples: int, judge: bool = True) -> dict:
    """A full eval report with per-example replies of FIRST and SECOND (and the judge's pairwise outcomes)."""
    rows = [{"index": i, "prompt": [{"role": "user", "content": f"Question {i}: what is {i} plus {i}?"}],
             "reference": str(2 * i),
             "outputs": {FIRST: {"text": f"I think it is {2 * i + 1}.", "label": None, "scores": {"exact_match": 0.0}},
                         SECOND: {"text": f"It is {2 * i}.", "label": None, "scores": {"exact_match": 1.0}}}}
            for i in range(examples)]
    outcomes = ["win" if i % 3 else "tie" for i in range(examples)]
    return {"candidates": [{"name": FIRST, "kind": "base"}, {"name": SECOND, "kind": "adapter"}],
            "baseline": FIRST, "verdict": {"decision": "SHIP", "candidate": SECOND}, "examples": rows,
            "judge": {"status": "ok", "pairwise": {SECOND: {"against": FIRST, "outcomes": outcomes}}} if judge
            else None}


def register_reviewed_version(db_url: str, folder: Path, project: str = "default", examples: int = 12,
                              judge: bool = True, number: int = 1) -> str:
    """Register a version of model `support` whose evaluation's full report holds per-example replies."""
    report_path = folder / f"{project}-{number}" / "report.json"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(eval_report(examples, judge)))
    name = f"ft:tiny:{project}:support:review{number:04d}"
    registry = Registry(db_url)
    with session(registry.engine) as db:
        registry.register(db, project=project, name=name, base_model="tiny", base_fingerprint="f" * 64, job_id=None,
                          training_file_sha256=None, dataset_id=None, config={"method": "lora"}, metrics={},
                          run_dir=folder / "run", weights_dir=folder / "run" / "adapter",
                          eval_report={"verdict": "SHIP", "reasons": [], "report_json": str(report_path)},
                          verdict="SHIP", actor="worker", model="support", author="dana")
    return name


def evaluation_of(db_url: str, version: str) -> str:
    with session(Registry(db_url).engine) as db:
        return f"eval-{db.query(VersionEvaluation).filter_by(version_name=version).one().id}"


@pytest.fixture
def db_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'hone.db'}"


# ------------------------------------------------------------------------------------------------ statistics


def test_cohens_kappa_matches_the_textbook_example():
    # Wikipedia, "Cohen's kappa": 50 proposals; both yes 20, A yes B no 5, A no B yes 10, both no 15 -> 0.4
    first = ["yes"] * 20 + ["yes"] * 5 + ["no"] * 10 + ["no"] * 15
    second = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohens_kappa(first, second) == pytest.approx(0.4)
    # a 3x3 table by hand: p_o = 6/10, p_e = (4*3 + 3*4 + 3*3)/100 = 0.33, kappa = 0.27/0.67
    a = ["x", "x", "x", "x", "y", "y", "y", "z", "z", "z"]
    b = ["x", "x", "y", "z", "y", "y", "x", "z", "z", "y"]
    assert cohens_kappa(a, b) == pytest.approx(0.27 / 0.67)
    assert cohens_kappa(a, a) == pytest.approx(1.0)
    assert cohens_kappa(["x"] * 5, ["x"] * 5) is None  # chance agreement is 1: undefined
    with pytest.raises(ValueError, match="same items"):
        cohens_kappa(["x"], ["x", "y"])


def test_fleiss_kappa_matches_the_textbook_example():
    # Wikipedia, "Fleiss' kappa" worked example: 10 subjects, 14 raters, 5 categories -> P = 0.378, Pe = 0.213, 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert fleiss_kappa(table) == pytest.approx(0.2099, abs=5e-4)
    assert fleiss_kappa([[3, 0], [0, 3], [3, 0]]) == pytest.approx(1.0)
    assert fleiss_kappa([[3, 0], [3, 0]]) is None
    with pytest.raises(ValueError, match="same number of ratings"):
        fleiss_kappa([[2, 1], [1, 1]])


def test_win_rate_counts_ties_and_both_bad_half_and_mirrors_for_the_other_candidate():
    judged = [("r1", 1, False, "first"), ("r1", 2, False, "first"), ("r1", 3, False, "second"),
              ("r1", 4, False, "tie"), ("r1", 5, False, "both_bad")]
    first, second = candidate_results([FIRST, SECOND], judged)
    assert first.win_rate == pytest.approx(3 / 5) and second.win_rate == pytest.approx(2 / 5)
    assert (first.wins, first.losses, first.ties, first.both_bad) == (2, 1, 1, 1)
    assert first.ci_low <= first.win_rate <= first.ci_high
    assert second.ci_low == pytest.approx(1 - first.ci_high) and second.ci_high == pytest.approx(1 - first.ci_low)


def test_a_choice_means_the_side_the_reviewer_saw():
    assert outcome_of("A", swapped=False) == "first" and outcome_of("A", swapped=True) == "second"
    assert outcome_of("B", swapped=False) == "second" and outcome_of("B", swapped=True) == "first"
    assert outcome_of("tie", swapped=True) == "tie" and outcome_of("both_bad", swapped=False) == "both_bad"


def test_results_pick_cohen_for_two_reviewers_fleiss_for_three_and_say_why_when_neither_applies():
    items = range(6)
    two = [("ann", i, False, "second") for i in items] + [("bob", i, False, "second" if i else "first")
                                                           for i in items]
    result = summarize("review-x", [FIRST, SECOND], two, {})
    assert result.agreement.method == "cohen" and result.agreement.items == 6
    # ann always said second, so 5 of 6 agreements are what chance gives: kappa 0 despite 83% observed agreement
    assert result.agreement.kappa == 0.0 and result.agreement.observed == pytest.approx(0.8333)
    same = summarize("review-x", [FIRST, SECOND], two[:6] + [("bob", i, False, "second") for i in items], {})
    assert same.agreement.kappa is None and "one category" in same.agreement.reason
    three = two + [("cy", i, False, "tie" if i < 2 else "second") for i in items]
    assert summarize("review-x", [FIRST, SECOND], three, {}).agreement.method == "fleiss"
    alone = summarize("review-x", [FIRST, SECOND], two[:6], {})
    assert alone.agreement.kappa is None and "at least 2 reviewers" in alone.agreement.reason
    few = summarize("review-x", [FIRST, SECOND], two[:3] + two[6:9], {})
    assert few.agreement.kappa is None and "only 3 items" in few.agreement.reason
    assert "no LLM judge" in alone.judge_agreement.reason


def test_self_consistency_compares_the_two_showings_of_an_item():
    judged = [("ann", 1, False, "first"), ("ann", 1, True, "first"), ("ann", 2, False, "second"),
              ("ann", 2, True, "tie"), ("bob", 1, False, "first")]
    consistency = {c.reviewer: c for c in summarize("review-x", [FIRST, SECOND], judged, {}).consistency}
    assert (consistency["ann"].repeats, consistency["ann"].consistent, consistency["ann"].rate) == (2, 1, 0.5)
    assert consistency["bob"].repeats == 0 and consistency["bob"].rate is None


# ------------------------------------------------------------------------------------------------ blinding


def test_each_reviewer_gets_a_stable_order_with_varying_sides_and_swapped_repeats_later():
    seed = reviewer_seed(0, "review-abc", "ann")
    order = reviewer_order(20, 3, seed)
    assert order == reviewer_order(20, 3, seed)  # stable for the same reviewer
    assert order != reviewer_order(20, 3, reviewer_seed(0, "review-abc", "bob"))  # another reviewer's differs
    firsts = [s for s in order if not s.repeat]
    assert sorted(s.item for s in firsts) == list(range(20)) and len(order) == 23
    assert {s.swapped for s in firsts} == {True, False}  # which candidate is A varies across items
    for repeat in (s for s in order if s.repeat):
        original = next(i for i, s in enumerate(order) if s.item == repeat.item and not s.repeat)
        assert order.index(repeat) >= original + 2 and repeat.swapped != order[original].swapped
    assert [s.repeat for s in reviewer_order(3, 5, seed)].count(True) == 1  # at most half the items repeat


# ------------------------------------------------------------------------------------------------ the store


def _judge_all(store: ReviewStore, round_id: str, reviewer: str, prefer: str, project: str = "default") -> None:
    """Judge every item preferring candidate `prefer` ("first"/"second") as the reviewer sees it."""
    while not (queue := store.next_item(project, round_id, reviewer)).done:
        item = queue.item
        first_on_a = item.reply_a.startswith("I think")  # FIRST's replies start "I think"
        choice = "A" if first_on_a == (prefer == "first") else "B"
        store.judge(project, round_id, item.id, reviewer, choice=choice)


def test_a_round_from_an_evaluation_blinds_reviewers_and_reports_agreement(db_url, tmp_path):
    version = register_reviewed_version(db_url, tmp_path / "eval", examples=12)
    store = ReviewStore(db_url)
    created = store.create("default", source="evaluation", model_version=version, items=12, seed=3, actor="dana")
    assert created.candidates == [FIRST, SECOND] and created.items == 12 and created.repeats == 1
    assert created.evaluation == evaluation_of(db_url, version) and created.progress.total == 13

    viewer_view = store.get("default", created.id, "ann", reveal=False)
    assert viewer_view.candidates is None and viewer_view.model_version is None and viewer_view.evaluation is None
    shown = store.items("default", created.id, "ann")
    assert [i.id for i in shown] == [i.id for i in store.items("default", created.id, "ann")]  # stored, stable
    assert [i.id for i in shown] != [i.id for i in store.items("default", created.id, "bob")]
    reviewer_sees = json.dumps([i.model_dump() for i in shown] + [store.next_item("default", created.id, "ann")
                                                                   .model_dump()])
    for secret in (FIRST, SECOND, version, "swapped", "candidate", "first", "second"):
        assert secret not in reviewer_sees
    assert not {FIRST, SECOND, version} & set(json.dumps(viewer_view.model_dump()).split('"'))
    assert {i.reply_a.startswith("I think") for i in shown} == {True, False}  # sides vary

    _judge_all(store, created.id, "ann", prefer="second")
    _judge_all(store, created.id, "bob", prefer="second")
    results = store.results("default", created.id)
    by_name = {c.name: c for c in results.candidates}
    assert by_name[SECOND].win_rate == 1.0 and by_name[SECOND].wins == 24 and results.judgments == 24
    assert by_name[FIRST].win_rate == 0.0 and by_name[FIRST].ci_high == 0.0 and results.both_bad_rate == 0.0
    assert results.agreement.method == "cohen" and results.agreement.observed == 1.0
    assert [(c.reviewer, c.repeats, c.rate) for c in results.consistency] == [("ann", 1, 1.0), ("bob", 1, 1.0)]
    # the judge said SECOND wins on 8 of the 12 examples and tie on the rest; the humans always preferred SECOND
    assert (results.judge_agreement.items, results.judge_agreement.agreeing) == (12, 8)
    assert store.list("default", "ann", True, evaluation=created.evaluation)[0].id == created.id
    assert store.list("default", "ann", True, model_version="nope") == []


def test_judgments_are_replaced_audited_and_scoped_to_their_reviewer_and_project(db_url, tmp_path):
    version = register_reviewed_version(db_url, tmp_path / "eval", examples=6)
    store = ReviewStore(db_url)
    created = store.create("default", source="evaluation", model_version=version, items=6, actor="dana")
    item = store.next_item("default", created.id, "ann").item
    store.judge("default", created.id, item.id, "ann", choice="A", reason="shorter")
    again = store.judge("default", created.id, item.id, "ann", choice="both_bad", corrected_answer="It is 0.")
    assert again.judgment.choice == "both_bad" and again.judgment.reason is None
    assert store.next_item("default", created.id, "ann").progress.judged == 1
    logged = sorted(entries(100, "default", db_url, action="review.judged"), key=lambda e: e.seq)
    assert [e.details["choice"] for e in logged] == ["A", "both_bad"] and logged[-1].details["replaced"] == "A"
    assert logged[0].details["reason"] is True  # that a reason was given, never its words
    assigned = entries(100, "default", db_url, action="review.assigned")
    assert [(e.actor, e.details["items"]) for e in assigned] == [("ann", 7)]  # made once, on the first visit
    with pytest.raises(NotFoundError):  # ann's item is not bob's
        store.judge("default", created.id, item.id, "bob", choice="A")
    with pytest.raises(NotFoundError):
        store.next_item("other", created.id, "ann")
    with pytest.raises(RequestError, match="choice"):
        store.judge("default", created.id, item.id, "ann", choice="C")
    with pytest.raises(RequestError, match="repeats"):
        store.create("default", source="evaluation", model_version=version, items=6, repeats=4, actor="dana")
    with pytest.raises(NotFoundError):
        store.create("other", source="evaluation", evaluation=created.evaluation, actor="dana")
    (tmp_path / "eval" / "default-1" / "report.json").unlink()
    with pytest.raises(ConflictError, match="no longer on disk"):
        store.create("default", source="evaluation", model_version=version, actor="dana")


def test_export_writes_corrections_and_dpo_pairs_that_hone_reads(db_url, tmp_path):
    version = register_reviewed_version(db_url, tmp_path / "eval", examples=6)
    store = ReviewStore(db_url)
    created = store.create("default", source="evaluation", model_version=version, items=6, repeats=0, actor="dana")
    choices = [("A", None), ("B", "It is exactly right."), ("tie", None), ("both_bad", None),
               ("both_bad", "The answer is 8."), ("A", None)]
    for item, (choice, fix) in zip(store.items("default", created.id, "ann"), choices, strict=True):
        store.judge("default", created.id, item.id, "ann", choice=choice, corrected_answer=fix)
    files = FileStore(db_url)
    exported = store.export("default", created.id, files, actor="dana")
    assert exported.corrections == 2 and exported.pairs == 5  # A, B+fix, both_bad+fix against each reply, A
    assert (exported.skipped.tie, exported.skipped.both_bad) == (1, 1)
    chat = read_dataset(files.path("default", exported.corrections_file.id))
    dpo = read_dataset(files.path("default", exported.preference_file.id))
    assert chat.format == "chat" and len(chat.examples) == 2 and not chat.problems
    assert dpo.format == "dpo" and len(dpo.examples) == 5 and not [p for p in dpo.problems if p.severity == "error"]
    assert files.get("default", exported.preference_file.id).usable
    assert entries(1, "default", db_url)[0].action == "review.exported"


def test_repeats_add_no_preference_pairs_but_their_corrections_count():
    item = SimpleNamespace(prompt_json=json.dumps([{"role": "user", "content": "2+2?"}]), first_reply="5",
                           second_reply="4")
    shown = [SimpleNamespace(swapped=0, repeat=0, choice="B", corrected_answer=None),
             SimpleNamespace(swapped=1, repeat=1, choice="B", corrected_answer="4, since 2+2=4")]  # B is now "5"
    chat, pairs, skipped = training_lines([(a, item) for a in shown])
    assert [p["preferred_output"][0]["content"] for p in pairs] == ["4"] and pairs[0]["non_preferred_output"][0][
        "content"] == "5"
    assert chat == [{"messages": [{"role": "user", "content": "2+2?"},
                                  {"role": "assistant", "content": "4, since 2+2=4"}]}]
    assert skipped.tie == skipped.both_bad == skipped.identical == 0


def test_a_round_from_shadow_traffic_pairs_champion_and_challenger_on_the_same_request(db_url):
    store = ReviewStore(db_url)
    with pytest.raises(ConflictError, match="shadow"):
        store.create("default", source="traffic", model="support@champion", actor="dana")
    with session(store.engine) as db:
        for i in range(5):
            request = json.dumps({"messages": [{"role": "user", "content": f"Hi, I am <PERSON> ({i})"}]})
            db.add(CapturedRequest(response_id=f"chatcmpl-{i}", project="default", model="support@champion",
                                   request_json=request, response_text=f"champion {i}", usage_json="{}",
                                   served_version="ft:v1", alias="champion", arm="primary"))
            db.add(CapturedRequest(response_id=f"chatcmpl-{i}-shadow", project="default", model="support@champion",
                                   request_json=request, response_text=f"challenger {i}", usage_json="{}",
                                   served_version="ft:v2", alias="champion", arm="shadow"))
    created = store.create("default", source="traffic", model="support@champion", items=4, actor="dana")
    assert created.candidates == ["ft:v1", "ft:v2"] and created.items == 4
    item = store.next_item("default", created.id, "ann").item
    number = item.prompt[0].content[-2]
    assert {item.reply_a, item.reply_b} == {f"champion {number}", f"challenger {number}"}
    assert "<PERSON>" in item.prompt[0].content


def test_the_command_line_starts_a_round_reads_its_results_and_exports(db_url, tmp_path):
    from typer.testing import CliRunner

    from hone.cli import app as cli

    version = register_reviewed_version(db_url, tmp_path / "eval", examples=6)
    run = CliRunner()
    created = run.invoke(cli, ["review", "create", "--model-version", version, "--items", "6", "--db", db_url,
                               "--json"])
    assert created.exit_code == 0, created.output
    round_id = json.loads(created.output)["id"]
    _judge_all(ReviewStore(db_url), round_id, "ann", prefer="second")
    _judge_all(ReviewStore(db_url), round_id, "bob", prefer="second")
    shown = run.invoke(cli, ["review", "results", round_id, "--db", db_url])
    assert shown.exit_code == 0 and f"{SECOND}: win rate 100%" in shown.output
    assert "agreement beyond chance is undefined" in shown.output  # both reviewers always chose the same side
    listed = run.invoke(cli, ["review", "list", "--db", db_url, "--json"])
    assert [r["id"] for r in json.loads(listed.output)["data"]] == [round_id]
    exported = run.invoke(cli, ["review", "export", round_id, "--db", db_url, "--json"])
    assert exported.exit_code == 0 and json.loads(exported.output)["pairs"] == 6
    missing = run.invoke(cli, ["review", "results", "review-nosuch", "--db", db_url])
    assert missing.exit_code != 0 and "review-nosuch" in str(missing.exception)
