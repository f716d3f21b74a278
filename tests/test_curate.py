"""`hone data prepare`: ingest, clean, PII, dedup, filters, decontamination, split, replay, manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hone.cli import app
from hone.data.curate.clean import CleanSettings, clean_examples
from hone.data.curate.decontaminate import decontaminate
from hone.data.curate.dedup import exact_dedup, near_dedup
from hone.data.curate.filters import QualitySettings, char_repetition_ratio, quality_filter
from hone.data.curate.pii import PiiSettings, scrub_examples
from hone.data.curate.prepare import PrepareConfig, ingest, prepare
from hone.data.curate.readiness import readiness
from hone.data.curate.replay import ReplaySettings, replay_count, replay_examples
from hone.data.curate.split import split_examples, split_sizes
from hone.data.formats import Example
from hone.errors import HoneError

TOPICS = ["invoice", "password", "shipping", "refund", "login", "upgrade", "export", "billing", "api key",
          "two-factor", "account deletion", "data import", "webhook", "team seat", "sso", "mobile app"]
SEEDED_PII = {
    "EMAIL_ADDRESS": "maria.lopez@northwind-mail.com",
    "PHONE_NUMBER": "+1 (415) 555-0132",
    "CREDIT_CARD": "4111 1111 1111 1111",
    "IBAN_CODE": "DE89370400440532013000",
    "IP_ADDRESS": "192.168.17.42",
    "US_SSN": "536-22-1234",
}


def chat(user: str, assistant: str, system: str | None = None) -> dict:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {"messages": messages}


def example(user: str, assistant: str, line: int = 1) -> Example:
    return Example(messages=chat(user, assistant)["messages"], source="mem.jsonl", line=line, format="chat")


def distinct_tickets(count: int) -> list[dict]:
    """Varied, clearly different support exchanges (no two share a 5-word run)."""
    rows = []
    for i in range(count):
        topic = TOPICS[i % len(TOPICS)]
        rows.append(chat(f"Ticket {i}: customer number {i * 7919 % 1000} asks about the {topic} page after "
                         f"the release of version {i % 9}.{i % 5}, week {i % 52}.",
                         f"Reply {i}: explained the {topic} steps; case {i * 31 % 997} closed on day {i % 28}."))
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def every_output_text(folder: Path) -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(folder.rglob("*")) if p.is_file())


def test_seeded_pii_of_every_type_never_appears_in_any_output_file(tmp_path):
    rows = distinct_tickets(40)
    for index, (kind, value) in enumerate(SEEDED_PII.items()):
        rows[index] = chat(f"Please update my record, my {kind.lower().replace('_', ' ')} is {value}. "
                           f"Thanks for the quick help with ticket {index}!",
                           f"Done: the record for ticket {index} now uses {value}.")
    data = write_jsonl(tmp_path / "raw.jsonl", rows)
    with data.open("a") as broken:  # a broken line whose error message quotes an email address
        broken.write(json.dumps({"messages": [{"role": SEEDED_PII["EMAIL_ADDRESS"], "content": "hi"}]}) + "\n")
    config = PrepareConfig(inputs=[{"path": data}], out=tmp_path / "ds", dedup={"near": False})

    manifest = prepare(config)

    written = every_output_text(tmp_path / "ds")
    for kind, value in SEEDED_PII.items():
        assert value not in written, kind
        assert f"<{kind}>" in written, kind
    pii_step = next(step for step in manifest["steps"] if step["name"] == "pii")
    assert {kind: pii_step["counts"][kind] for kind in SEEDED_PII} == {kind: 2 for kind in SEEDED_PII}


def test_pii_hash_mode_is_stable_per_value_and_drop_mode_removes_the_example():
    rows = [example("write to anna.berg@example.org please", "sent to anna.berg@example.org", 1),
            example("nothing private here", "fine", 2)]
    hashed, _ = scrub_examples(rows, PiiSettings(mode="hash", salt="s3cret"))
    user, reply = hashed[0].messages[0]["content"], hashed[0].messages[1]["content"]
    token = user.split()[2]
    assert token.startswith("<EMAIL_ADDRESS_") and token in reply and "anna" not in user + reply

    kept, report = scrub_examples(rows, PiiSettings(mode="drop"))
    assert [e.line for e in kept] == [2]
    assert report.removed[0].detail == "found EMAIL_ADDRESS" and "anna" not in json.dumps(report.to_dict())
    with pytest.raises(ValueError, match="salt"):
        PiiSettings(mode="hash")


def test_near_duplicates_with_small_edits_are_removed_and_distinct_examples_kept():
    base = ("Thank you for contacting support about the delayed shipment of your order. Our warehouse "
            "confirmed the parcel left yesterday and the tracking number will be emailed within a day. If it "
            "has not arrived by Friday, reply to this message and we will send a replacement at no cost, or "
            "refund the full amount to your original payment method, whichever you prefer.")
    # one word changed, plus case and punctuation edits (which shingling ignores)
    edited = base.replace("yesterday", "today").replace("Thank you for", "THANK YOU, for").replace(".", "!")
    distinct = [example(row["messages"][0]["content"], row["messages"][1]["content"], i + 3)
                for i, row in enumerate(distinct_tickets(30))]
    rows = [example("Where is my order?", base, 1), example("Where is my order?", edited, 2), *distinct]

    kept, report = near_dedup(rows, threshold=0.8)

    assert [e.line for e in kept] == [1] + [e.line for e in distinct]
    assert report.counts["removed_near_duplicate"] == 1
    cluster = report.extra["clusters"][0]
    assert cluster["kept"]["line"] == 1 and cluster["removed"][0]["line"] == 2


def test_a_long_shared_system_prompt_does_not_make_short_examples_near_duplicates():
    system = " ".join(f"Rule {i}: answer the customer politely and name the policy that applies." for i in range(20))
    rows = [Example([{"role": "system", "content": system}, {"role": "user", "content": question},
                     {"role": "assistant", "content": answer}], "tickets.jsonl", line, "chat")
            for line, (question, answer) in enumerate([("Where is my parcel?", "shipping"),
                                                       ("My card was charged twice", "billing"),
                                                       ("I cannot log in", "account")], 1)]
    kept, report = near_dedup(rows, threshold=0.8)
    assert [e.line for e in kept] == [1, 2, 3] and not report.removed  # the system prompt is shared by design


def test_exact_duplicates_ignore_case_spacing_and_punctuation():
    rows = [example("Reset my password", "Use the link.", 1), example("reset  my password!", "use the link", 2),
            example("Reset my password", "Use the other link.", 3)]
    kept, report = exact_dedup(rows)
    assert [e.line for e in kept] == [1, 3]
    assert report.removed[0].detail == "same text as mem.jsonl:1"


def test_clean_normalises_counts_changes_and_drops_empty_turns():
    rows = [example("Cafe\u0301   menu  \r\n\r\n\r\n\r\nplease", "Sure.\n--\nJane Roe\nSupport Team", 1),
            example("hello", "   ", 2)]
    settings = CleanSettings(boilerplate=[r"^--\n(?:.*\n?){0,3}"])
    kept, report = clean_examples(rows, settings)
    assert kept[0].messages[0]["content"] == "Caf\u00e9 menu\n\nplease"
    assert kept[0].messages[1]["content"] == "Sure."
    assert report.counts["unicode_normalised"] == 1 and report.counts["boilerplate_removed"] == 1
    assert report.counts["empty_turns_dropped"] == 1
    assert report.removed[0].line == 2 and report.removed[0].reason == "no_assistant_turn"


def test_quality_filter_records_each_reason():
    rows = [example("fine question here", "a perfectly normal answer", 1),
            example("spam", "buy now " * 40, 2),
            example("symbols", "#$%^&*()_+{}|:<>?~`-=[];',./!@", 3),
            example("long", "x" * 50, 4)]
    kept, report = quality_filter(rows, QualitySettings(max_chars={"assistant": 45}))
    assert [e.line for e in kept] == [1]
    assert {r.line: r.reason for r in report.removed} == {2: "too_long", 3: "low_alnum", 4: "too_long"}
    kept, report = quality_filter(rows[:2], QualitySettings())
    assert {r.line: r.reason for r in report.removed} == {2: "repetitive"}
    assert char_repetition_ratio("abcdefghijklmnopqrstuvwxyz") == 0.0


def test_decontamination_removes_examples_sharing_a_13_gram_with_the_test_set():
    test_set = [example("Summarise: the quarterly report shows revenue grew by twelve percent while costs fell in "
                        "every region", "Revenue up 12%, costs down everywhere.")]
    rows = [example("Summarise: Quarterly report shows revenue grew by twelve percent while costs fell in "
                    "every region, said the CFO.", "Revenue grew.", 1),
            example("Summarise: Revenue grew by twelve percent.", "Revenue up 12%, costs down everywhere.", 2)]
    kept, report = decontaminate(rows, test_set, n=13)
    assert [e.line for e in kept] == [2]  # the same reply is not a leak; the same question is
    assert report.removed[0].reason == "contaminated" and "13-gram" in report.removed[0].detail


def test_split_is_seeded_exact_and_stratified():
    rows = [example(f"q{i}", f"label-{'a' if i % 4 else 'b'}", i) for i in range(100)]
    fractions = {"train": 0.8, "val": 0.1, "test": 0.1}
    first = split_examples(rows, fractions, seed=3, stratify=lambda e: e.messages[1]["content"])
    again = split_examples(rows, fractions, seed=3, stratify=lambda e: e.messages[1]["content"])
    assert {k: [e.line for e in v] for k, v in first.items()} == {k: [e.line for e in v] for k, v in again.items()}
    assert sum(len(v) for v in first.values()) == 100 and len(first["train"]) == 80
    labels = [e.messages[1]["content"] for e in first["test"]]
    assert len(first["test"]) == len(first["val"]) == 10  # ties in rounding alternate between classes
    assert {labels.count("label-a"), labels.count("label-b")} in ({7, 3}, {8, 2})
    assert split_sizes(7, fractions) == {"train": 5, "val": 1, "test": 1}


def test_readiness_verdicts_and_class_balance():
    assert readiness("style", 350)["verdict"] == "ready"
    assert readiness("format", 250)["verdict"] == "thin"
    assert readiness("instruction", 999)["verdict"] == "too small"
    result = readiness("classification", 260, ["a"] * 240 + ["b"] * 20)
    assert result["verdict"] == "too small" and result["smallest_class"] == {"label": "b", "count": 20}
    assert any("imbalanced" in warning for warning in result["warnings"])
    with pytest.raises(ValueError, match="split.stratify"):
        PrepareConfig(inputs=[{"path": "x.jsonl"}], out="ds", task={"type": "classification"})


def test_every_input_format_round_trips_to_the_canonical_chat_form(tmp_path):
    expected = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
                {"role": "assistant", "content": "4"}]
    write_jsonl(tmp_path / "chat.jsonl", [{"messages": expected}])
    write_jsonl(tmp_path / "pc.jsonl", [{"system": "Be brief.", "prompt": "What is 2+2?", "completion": "4"}])
    write_jsonl(tmp_path / "alpaca.jsonl", [{"system": "Be brief.", "instruction": "What is 2+2?", "output": "4"}])
    write_jsonl(tmp_path / "sharegpt.jsonl", [{"conversations": [
        {"from": "system", "value": "Be brief."}, {"from": "human", "value": "What is 2+2?"},
        {"from": "gpt", "value": "4"}]}])
    (tmp_path / "faq.csv").write_text("sys,question,answer\nBe brief.,What is 2+2?,4\n")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "handbook.md").write_text("# Handbook\n\nOur refund window is 30 days.\n\nShipping is free.\n")
    inputs = [{"path": tmp_path / name} for name in ("chat.jsonl", "pc.jsonl", "alpaca.jsonl", "sharegpt.jsonl")]
    inputs += [{"path": tmp_path / "faq.csv", "columns": {"system": "sys", "prompt": "question",
                                                         "completion": "answer"}},
               {"path": docs}]

    examples, sources, problems = ingest(PrepareConfig(inputs=inputs, out=tmp_path / "out"))

    assert problems == []
    assert [e.messages for e in examples[:5]] == [expected] * 5
    assert [s["format"] for s in sources] == ["chat", "prompt_completion", "alpaca", "sharegpt", "csv", "documents"]
    assert examples[5].messages[1]["content"].startswith("# Handbook\n\nOur refund window")
    assert (examples[5].source, examples[5].line) == (str(docs / "handbook.md"), 1)


def test_broken_lines_are_all_reported_and_strict_stops_at_the_first(tmp_path):
    rows = [json.dumps(r) for r in distinct_tickets(20)]
    rows[3] = '{"messages": [{"role": "user", "content": "cut off'
    rows[7] = '{"messages": [{"role": "customer", "content": "hi"}, {"role": "assistant", "content": "x"}]}'
    rows[11] = '["not", "an", "object"]'
    data = tmp_path / "broken.jsonl"
    data.write_text("\n".join(rows) + "\n")
    config = PrepareConfig(inputs=[{"path": data}], out=tmp_path / "ds", pii=None)

    manifest = prepare(config)

    assert manifest["counts"]["broken_lines"] == 3 and manifest["counts"]["ingested"] == 17
    report = json.loads((tmp_path / "ds" / "report.json").read_text())
    assert sorted(p["line"] for p in report["problems"] if p["severity"] == "error") == [4, 8, 12]
    assert "broken.jsonl" in report["problems"][0]["field"]
    html = (tmp_path / "ds" / "report.html").read_text()
    assert "Broken input lines" in html and "customer" in html
    with pytest.raises(HoneError, match="broken.jsonl:4"):
        prepare(config.model_copy(update={"strict": True, "out": tmp_path / "ds2"}))


def test_manifest_is_reproducible_and_versions_are_immutable(tmp_path):
    data = write_jsonl(tmp_path / "raw.jsonl", distinct_tickets(60))
    first = prepare(PrepareConfig(inputs=[{"path": data}], out=tmp_path / "a"))
    second = prepare(PrepareConfig(inputs=[{"path": data}], out=tmp_path / "b"))
    assert first["dataset_id"] == second["dataset_id"]
    assert first["files"] == second["files"] and first["counts"]["train"] == 48
    assert first["sources"][0]["sha256"] and [s["name"] for s in first["steps"]] == [
        "clean", "pii", "exact_dedup", "near_dedup", "quality"]
    prepare(PrepareConfig(inputs=[{"path": data}], out=tmp_path / "a"))  # same version again: fine
    with pytest.raises(HoneError, match="different dataset version"):
        prepare(PrepareConfig(inputs=[{"path": data}], out=tmp_path / "a", split={"seed": 9}))


def test_replay_from_a_file_and_from_the_base_model_itself(tmp_path, tiny_model_dir):
    assert replay_count(90, 0.1) == 10
    general = write_jsonl(tmp_path / "general.jsonl", distinct_tickets(30))
    added, report = replay_examples(ReplaySettings(source=str(general)), train_count=45, model="unused")
    assert len(added) == 5 and report.counts["added"] == 5

    settings = ReplaySettings(source="self", max_new_tokens=16, batch_size=8)
    added, report = replay_examples(settings, train_count=36, model=str(tiny_model_dir), seed=1)
    # the random tiny model rarely stops on its own: cut-off answers are counted and left out
    assert report.params["target"] == 4
    assert report.counts["added"] + report.counts.get("short_of_target", 0) == 4
    generated = report.counts["answers_generated"]
    skipped = report.counts.get("skipped_cut_off_or_empty", 0)
    assert 4 <= generated <= 8 and generated == report.counts["added"] + skipped
    _, again = replay_examples(settings, train_count=36, model=str(tiny_model_dir), seed=1)
    assert again.counts["answers_cached"] == generated and "answers_generated" not in again.counts


def test_cli_prepare_writes_a_dataset_that_hone_train_accepts(tmp_path, tiny_model_dir):
    from hone.train.config import parse_config
    from hone.train.run import train

    data = write_jsonl(tmp_path / "raw.jsonl", distinct_tickets(40))
    config = tmp_path / "prepare.yaml"
    config.write_text(f"inputs:\n  - path: raw.jsonl\nout: {tmp_path / 'ds'}\ntask:\n  type: style\n")
    result = CliRunner().invoke(app, ["data", "prepare", str(config), "--json"])
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest["readiness"]["verdict"] == "too small" and manifest["counts"]["train"] == 32
    bad = CliRunner().invoke(app, ["data", "prepare", str(data)])
    assert isinstance(bad.exception, HoneError) and "--out" in str(bad.exception)

    run_config = parse_config({"base_model": str(tiny_model_dir), "data": {"train": str(tmp_path / "ds")},
                               "training": {"max_steps": 1, "batch_size": 4}, "output_dir": str(tmp_path / "runs")})
    run_dir = train(run_config, show_progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["dataset_id"] == manifest["dataset_id"] and summary["examples"]["eval"] == 4


def test_an_installed_spacy_ner_model_adds_person_and_location(tmp_path):
    import spacy
    from spacy.training import Example as SpacyExample

    sentences = [("Anna Berg moved to Oslo last spring.", [(0, 9, "PERSON"), (19, 23, "GPE")]),
                 ("Please ask Tom Okafor in Lagos.", [(11, 21, "PERSON"), (25, 30, "GPE")]),
                 ("The parcel for Lena Roth reached Berlin.", [(15, 24, "PERSON"), (33, 39, "GPE")])]
    nlp = spacy.blank("en")
    nlp.add_pipe("ner")
    samples = [SpacyExample.from_dict(nlp.make_doc(text), {"entities": spans}) for text, spans in sentences]
    optimizer = nlp.initialize(lambda: samples)
    for _ in range(40):  # a deliberately over-fitted NER model: enough to prove the wiring
        nlp.update(samples, sgd=optimizer, drop=0.0)
    nlp.to_disk(tmp_path / "ner")

    rows = [example(sentences[0][0], "Noted, thanks.", 1)]
    kept, report = scrub_examples(rows, PiiSettings(ner_model=str(tmp_path / "ner")))
    assert kept[0].messages[0]["content"] == "<PERSON> moved to <LOCATION> last spring."
    assert report.counts["PERSON"] >= 1 and report.counts["LOCATION"] >= 1  # the toy model may tag the reply too
    assert report.params["entities"][-2:] == ["PERSON", "LOCATION"]
    with pytest.raises(HoneError, match="ner_model"):
        scrub_examples(rows, PiiSettings(ner_model="en_core_web_missing"))
