"""`hone distill label` with a judge and a dataset version, over real sockets: a fake teacher and a separate fake
judge (OpenAI-compatible, each answer a function of the request). The judge filter rejects low scores with a
reason, an unscored prompt is a failure that a rerun retries, and no verdict is asked twice; the judge picks the best
of several free-text samples whatever its position, and a position-biased judge only ties; the kept examples become
a dataset version (PII masked, deduplicated against existing data, decontaminated against the given test file and
the project's recorded evaluation sets) whose rows keep their lineage. And `hone data prepare` with `dedup.against`."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import Counter
from pathlib import Path

import yaml
from conftest import serve_app
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from typer.testing import CliRunner

from hone.audit import entries
from hone.cli import app as cli
from hone.data.validate import validate_file
from hone.distill.filters import JudgeFilter
from hone.distill.label import JudgeCalls, LabelConfig, judge_pick, label, load_label_config
from hone.distill.teacher import Answer, AnswerCache, TeacherSettings
from hone.eval.judge import SYSTEM_PROMPT

TEACHER = "big-teacher"


def _tag(text: str, tag: str) -> str | None:
    found = re.search(rf"<{tag}>\n(.*?)\n</{tag}>", text, re.S)
    return found.group(1) if found else None


def _judge_answer(app: FastAPI, model: str, messages: list[dict]) -> str | JSONResponse:
    """fair-judge (and any other model): a reply with "poor" scores 2, others 5; of two replies the one saying
    "best" wins in either position. lazy-judge: every reply scores 5 and reply A always wins. While
    `app.state.down`, a conversation about "shaky" gets prose, then HTTP 500."""
    question = messages[1]["content"]
    if app.state.down and "shaky" in _tag(question, "conversation"):
        if len(messages) == 2:
            return "I would say this deserves a five."
        return JSONResponse({"error": {"message": "judge overloaded", "type": "server_error"}}, status_code=500)
    reply = _tag(question, "reply")
    if reply is not None:
        return json.dumps({"score": 2 if "poor" in reply and model != "lazy-judge" else 5, "reason": "rubric"})
    a, b = _tag(question, "reply_a"), _tag(question, "reply_b")
    app.state.pairs.append((a, b))
    if model == "lazy-judge":
        return json.dumps({"winner": "A", "reason": "first is best"})
    winner = "A" if "best" in a and "best" not in b else "B" if "best" in b and "best" not in a else "tie"
    return json.dumps({"winner": winner, "reason": "content"})


def fine(prompt: str) -> str:
    """The teacher's answer to an unlisted prompt: its own case number, and no words of the prompt."""
    return f"Case {hashlib.sha256(prompt.encode()).hexdigest()[:8]}: the team checked it and sent you the steps."


def endpoint(answers: dict[str, list[str]] | None = None) -> tuple[FastAPI, Counter]:
    """One OpenAI-compatible server: a judge for requests with the judge's system prompt, else a teacher that
    answers its k-th request for prompt p with answers[p][k % len] (fine(p) when p is not listed).
    The counter counts ("teacher", prompt), "rubric" and "pairwise" requests."""
    app, calls = FastAPI(), Counter()
    app.state.down, app.state.pairs = False, []
    lock = threading.Lock()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        messages = body["messages"]
        if messages[0]["content"] == SYSTEM_PROMPT:
            with lock:
                calls["rubric" if _tag(messages[1]["content"], "reply") is not None else "pairwise"] += 1
                text = _judge_answer(app, body["model"], messages)
            if isinstance(text, JSONResponse):
                return text
        else:
            prompt = messages[-1]["content"]
            with lock:
                seen = calls["teacher", prompt]
                calls["teacher", prompt] += 1
            options = (answers or {}).get(prompt, [fine(prompt)])
            text = options[seen % len(options)]
        return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}

    return app, calls


def write_prompts(path: Path, prompts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path


def config(teacher: str, out: Path, prompts: Path, **task) -> LabelConfig:
    return LabelConfig(teacher=TeacherSettings(url=teacher, model=TEACHER, concurrency=1), prompts=prompts, out=out,
                       **task)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_judge_rejects_low_scores_fails_unscored_prompts_and_is_never_asked_twice(tmp_path, monkeypatch):
    monkeypatch.setattr("hone.eval.judge.RETRY_PAUSE_S", 0.01)
    prompts = write_prompts(tmp_path / "prompts.jsonl", ["q good", "q poor", "q shaky"])
    teacher_app, teacher_calls = endpoint({"q poor": ["a poor answer to q poor"]})
    judge_app, judge_calls = endpoint()
    judge_app.state.down = True
    out = tmp_path / "out"
    with serve_app(teacher_app) as teacher, serve_app(judge_app) as judge:
        judged = {"judge": {"url": judge, "model": "fair-judge", "min_score": 4, "retries": 1}}
        first = label(config(teacher, out, prompts, filters=judged), show_progress=False)
        assert (first["labeled"], first["rejected"], first["failed"], first["complete"]) == (1, 1, 1, False)
        assert first["judge"] == {"model": "fair-judge", "calls": 3, "min_score": 4, "is_the_teacher": False}
        assert first["rejections"] == {"judge": 1}
        [rejected] = lines(out / "rejected.jsonl")
        assert rejected["answers"] == [{"text": "a poor answer to q poor",
                                        "reasons": ["judge: score 2 is below min_score 4"]}]
        [failure] = lines(out / "failures.jsonl")  # prose, then an HTTP 500: no score, neither kept nor dropped
        assert failure["messages"] == [{"role": "user", "content": "q shaky"}]
        assert failure["errors"][0].startswith("judge: HTTP 500") and "judge overloaded" in failure["errors"][0]
        assert judge_calls["rubric"] == 4  # one each, and the shaky one twice (its retry)
        [kept] = lines(out / "labeled.jsonl")
        assert kept["messages"][-1]["content"] == fine("q good")
        assert kept["metadata"]["distill"]["filters"] == {
            "passed": ["empty"], "judge": {"model": "fair-judge", "score": 5, "min_score": 4}}

        judge_app.state.down = False
        second = label(config(teacher, out, prompts, filters=judged), show_progress=False)
        assert judge_calls["rubric"] == 5 and second["judge"]["calls"] == 1  # only the failed prompt is asked again
        assert (second["labeled"], second["rejected"], second["failed"], second["complete"]) == (2, 1, 0, True)
        assert [r["messages"][-1]["content"] for r in lines(out / "labeled.jsonl")] == [
            fine("q good"), fine("q shaky")]

        third = label(config(teacher, out, prompts, filters=judged), show_progress=False)
        assert judge_calls["rubric"] == 5 and third["judge"]["calls"] == 0 and third["labeled"] == 2
        assert sum(n for key, n in teacher_calls.items() if key[0] == "teacher") == 3  # the teacher was asked once

        own = {"judge": {"url": teacher + "/", "model": TEACHER}}  # the same endpoint, written differently
        same = label(config(teacher, tmp_path / "self", prompts, filters=own), show_progress=False)
        assert same["judge"]["is_the_teacher"] is True and same["rejected"] == 1


REFUNDS, SHIPPING = "how do refunds work?", "how long does shipping take?"
SHORT = "Refunds take five days."
BEST = "The best answer: refunds reach your card within five business days of the return."
LONG = "Shipping " + "takes a while " * 20
BRIEF = "Shipping takes two days."
BEST_SHIPPING = "The best answer: shipping takes two days and the tracking link comes by mail."


def test_the_judge_picks_the_best_free_text_sample_and_a_position_biased_judge_only_ties(tmp_path, tiny_model_dir):
    prompts = write_prompts(tmp_path / "prompts.jsonl", [REFUNDS, SHIPPING])
    teacher_app, _ = endpoint({REFUNDS: [SHORT, BEST, SHORT], SHIPPING: [LONG, BRIEF, BEST_SHIPPING]})
    judge_app, judge_calls = endpoint()
    with serve_app(teacher_app) as teacher, serve_app(judge_app) as judge:
        def run(model: str, out: Path) -> tuple[dict, list[dict]]:
            filters = {"max_length": 100, "judge": {"url": judge, "model": model, "concurrency": 2}}
            summary = label(config(teacher, out, prompts, samples=3, filters=filters), show_progress=False)
            return summary, lines(out / "labeled.jsonl")

        summary, rows = run("fair-judge", tmp_path / "fair")
        assert [r["messages"][-1]["content"] for r in rows] == [BEST, BEST_SHIPPING]  # not the majority's SHORT
        assert [r["metadata"]["distill"]["picked_by"] for r in rows] == ["judge", "judge"]
        assert [r["metadata"]["distill"]["agreement"] for r in rows] == [1 / 3, 1 / 3]
        assert (SHORT, BEST) in judge_app.state.pairs and (BEST, SHORT) in judge_app.state.pairs  # both orders
        assert (judge_calls["pairwise"], judge_calls["rubric"]) == (4, 2)
        assert summary["rejections"] == {"max_length": 1} and summary["pairs"] == 1
        [pair] = lines(tmp_path / "fair" / "pairs.jsonl")
        assert pair["input"]["messages"] == [{"role": "user", "content": SHIPPING}]
        assert pair["preferred_output"] == [{"role": "assistant", "content": BEST_SHIPPING}]
        assert pair["non_preferred_output"] == [{"role": "assistant", "content": LONG.strip()}]
        pairs = validate_file(tmp_path / "fair" / "pairs.jsonl", model=str(tiny_model_dir))
        assert pairs.format == "dpo" and pairs.ok

        _, rows = run("lazy-judge", tmp_path / "lazy")  # "A" in both orders: a tie, never a win
        assert [r["messages"][-1]["content"] for r in rows] == [SHORT, BRIEF]  # more common, then the earlier
        assert [r["metadata"]["distill"]["agreement"] for r in rows] == [2 / 3, 1 / 3]

        lazy = JudgeCalls(JudgeFilter(url=judge, model="lazy-judge"), AnswerCache(tmp_path / "judged.jsonl"))
        samples = [Answer(text, 1, 1, 0.1, None, "") for text in (SHORT, BRIEF, BRIEF, SHORT)]
        winner, errors = judge_pick(lazy, [{"role": "user", "content": "which?"}], samples)
        assert (winner.text, errors) == (SHORT, [])  # as common and as good: the one the teacher gave first


TOPICS = ["invoice", "password", "shipping", "refund", "login", "upgrade", "export", "billing", "api key",
          "two-factor", "account deletion", "data import", "webhook", "team seat", "sso", "mobile app"]
PII_PROMPT = "How do I reach the billing team about ticket 90?"
PII_ANSWER = "Write to maria.lopez@northwind-mail.com or call +1 (415) 555-0132 about ticket 90."
KNOWN = "How do I export every invoice of last year as one CSV file?"
LEAKED = "Help: the mobile app crashes on start every single time I open it on my phone, please fix it"
EVAL_LEAKED = "my two factor codes from the authenticator never match the ones the site expects at login, why?"


def chat(user: str, assistant: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def record_eval(db: str, folder: Path, data: Path) -> None:
    """An evaluation on record for project default whose full report names its test file."""
    from hone.registry.promotion import record_evaluation
    from hone.store import engine_for, session

    folder.mkdir()
    (folder / "report.json").write_text(json.dumps({"config": {"data": str(data)}}))
    with session(engine_for(db)) as tx:
        record_evaluation(tx, project="default", version_name=f"ft:tiny:default:support:{folder.name}",
                          against=None, actor="dana", summary={"verdict": "SHIP", "reasons": [],
                                                               "report_json": str(folder / "report.json")})


def test_kept_examples_become_a_scrubbed_deduplicated_decontaminated_dataset_version_with_lineage(tmp_path):
    db = f"sqlite:///{tmp_path / 'hone.db'}"
    tickets = [f"Ticket {i}: customer number {i * 7919 % 1000} asks about the {TOPICS[i % len(TOPICS)]} page after "
               f"the release of version {i % 9}.{i % 5}, week {i % 52}." for i in range(20)]
    write_prompts(tmp_path / "prompts.jsonl", [*tickets, PII_PROMPT, KNOWN, LEAKED, EVAL_LEAKED])
    (tmp_path / "existing.jsonl").write_text(json.dumps(chat("Reset my password", "Use the link.")) + "\n"
                                             + json.dumps(chat(KNOWN, fine(KNOWN))) + "\n")
    (tmp_path / "test.jsonl").write_text(json.dumps(chat(
        "Since Monday the mobile app crashes on start every single time I open it on my phone", "Reinstall.")) + "\n")
    (tmp_path / "eval.jsonl").write_text(json.dumps(chat(
        "Ticket 93: my two factor codes from the authenticator never match the ones the site expects at login",
        "Sync the clock.")) + "\n")
    record_eval(db, tmp_path / "eval-1", tmp_path / "eval.jsonl")
    record_eval(db, tmp_path / "eval-2", tmp_path / "deleted.jsonl")  # its test file is gone
    teacher_app, _ = endpoint({PII_PROMPT: [PII_ANSWER]})
    with serve_app(teacher_app) as teacher:
        (tmp_path / "label.yaml").write_text(yaml.safe_dump({
            "teacher": {"url": teacher, "model": TEACHER, "concurrency": 4}, "prompts": "prompts.jsonl",
            "out": str(tmp_path / "out"),
            "dataset": {"name": "support", "folder": "versions", "database": db,
                        "decontaminate": {"against": ["test.jsonl"]}, "dedup": {"against": ["existing.jsonl"]}}}))
        summary = label(load_label_config(tmp_path / "label.yaml"), show_progress=False)
        again = label(load_label_config(tmp_path / "label.yaml"), show_progress=False)

    made = summary["dataset"]
    version = Path(made["path"])
    assert version.parent == tmp_path / "versions" and version.name == f"support-{made['dataset_id'][:12]}"
    assert re.fullmatch(r"support-[0-9a-f]{12}", version.name)
    assert {p.name for p in version.iterdir()} >= {"manifest.json", "report.html", "train.jsonl", "val.jsonl",
                                                   "test.jsonl"}
    assert made["steps"]["dedup_against_existing"] == 1 and made["steps"]["decontaminate"] == 2
    assert (made["protected_eval_sets"], made["eval_sets_gone"]) == (2, 1)
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["counts"]["ingested"] == 24
    assert sum(manifest["counts"][s] for s in ("train", "val", "test")) == 21 and manifest["counts"]["test"] > 0

    rows = [row for split in ("train", "val", "test") for row in lines(version / f"{split}.jsonl")]
    users = {row["messages"][0]["content"] for row in rows}
    assert users == {*tickets, PII_PROMPT}  # the known row and both leaked prompts are gone
    assert all(row["metadata"]["distill"]["teacher"]["model"] == TEACHER for row in rows)
    assert all(row["metadata"]["distill"]["kind"] == "label" and row["metadata"]["source"] for row in rows)
    [scrubbed] = [row["messages"][1]["content"] for row in rows if row["messages"][0]["content"] == PII_PROMPT]
    assert "<EMAIL_ADDRESS>" in scrubbed and "<PHONE_NUMBER>" in scrubbed
    written = "\n".join(p.read_text() for p in version.iterdir())
    assert "maria.lopez" not in written and "555-0132" not in written
    report = json.loads((version / "report.json").read_text())
    against = next(step for step in report["steps"] if step["name"] == "dedup_against_existing")
    assert [(r["reason"], r["detail"]) for r in against["removed"]] == [
        ("duplicate_of_existing", f"the same text as {tmp_path / 'existing.jsonl'}:2")]

    [rerun, first] = entries(project="default", db_url=db, action="dataset.prepared")
    assert (first.object_type, first.object_id, first.actor) == ("dataset", made["dataset_id"], "hone distill")
    assert first.details["out"] == version.name and first.details["pii"]["EMAIL_ADDRESS"] == 1
    assert again["dataset"]["dataset_id"] == made["dataset_id"] and again["usage"]["cached"] == 24
    assert rerun.object_id == made["dataset_id"]
    assert [p.name for p in (tmp_path / "versions").iterdir()] == [version.name]  # one immutable version


EXISTING_LONG = ("Thank you for contacting support about the delayed shipment of your order. Our warehouse confirmed "
                 "the parcel left yesterday and the tracking number will be emailed within a day. If it has not "
                 "arrived by Friday, reply to this message and we will send a replacement at no cost, or refund the "
                 "full amount to your original payment method, whichever you prefer.")

MAILED = chat("Please send the invoice to maria.lopez@northwind-mail.com", "Sent it to maria.lopez@northwind-mail.com.")


def test_prepare_removes_exact_and_near_repeats_of_existing_data_and_names_their_line(tmp_path):
    existing = tmp_path / "existing.jsonl"
    existing.write_text("".join(json.dumps(row) + "\n" for row in (
        chat("Can I change my plan?", "Yes, under Billing."),
        chat("Reset my password", "Use the link on the sign-in page."),
        chat("Where is my order?", EXISTING_LONG), MAILED)))
    fresh = [chat(f"Ticket {i}: customer number {i * 7919 % 1000} asks about the {TOPICS[i % len(TOPICS)]} page.",
                  f"Reply {i}: explained the {TOPICS[i % len(TOPICS)]} steps; case {i * 31 % 997} closed.")
             for i in range(10)]
    edited = EXISTING_LONG.replace("yesterday", "today").replace("Thank you for", "THANK YOU, for")
    rows = [chat("reset my  password!", "use the link on the sign in page"), chat("Where is my order?", edited),
            MAILED, *fresh]  # the one with PII is a repeat too, though only the new row gets masked
    (tmp_path / "raw.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "prepare.yaml").write_text(yaml.safe_dump({
        "inputs": [{"path": "raw.jsonl"}], "out": str(tmp_path / "ds"), "dedup": {"against": ["existing.jsonl"]}}))
    result = CliRunner().invoke(cli, ["data", "prepare", str(tmp_path / "prepare.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    step = next(s for s in manifest["steps"] if s["name"] == "dedup_against_existing")
    assert step["removed"] == 3 and step["counts"]["kept"] == 10
    report = json.loads((tmp_path / "ds" / "report.json").read_text())
    removed = next(s for s in report["steps"] if s["name"] == "dedup_against_existing")["removed"]
    assert [(r["line"], r["reason"]) for r in removed] == [(1, "duplicate_of_existing"),
                                                           (2, "near_duplicate_of_existing"),
                                                           (3, "duplicate_of_existing")]
    assert removed[0]["detail"] == f"the same text as {existing}:2"
    assert re.fullmatch(rf"0\.\d\d similar to {re.escape(str(existing))}:3", removed[1]["detail"])
    assert removed[2]["detail"] == f"the same text as {existing}:4"
    kept = [json.loads(line)["messages"][0]["content"] for split in ("train", "val", "test")
            for line in (tmp_path / "ds" / f"{split}.jsonl").read_text().splitlines()]
    assert sorted(kept) == sorted(row["messages"][0]["content"] for row in fresh)
