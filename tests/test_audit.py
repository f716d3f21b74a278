"""The audit trail: entries chain by hash inside the caller's transaction, and verify names the first entry that was
changed, removed, inserted or cut off, and any checkpoint whose signature does not hold."""

from __future__ import annotations

import json
import os
import stat
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from hone.audit import canonical_json, checkpoint, entries, entry_hash, export, record, signing_key_path, verify
from hone.cli import app
from hone.errors import HoneError
from hone.store import engine_for, session

pytest_plugins = ["store_fixtures"]  # the db_url fixture: SQLite, and PostgreSQL (a throwaway server if none is set)

runner = CliRunner()


def append(db_url: str, count: int, project: str = "default") -> None:
    for number in range(count):
        with session(engine_for(db_url)) as db:
            record(db, project=project, actor="cli", action="file.uploaded", object_type="file",
                   object_id=f"file-{project}-{number}", details={"bytes": number, "name": f"ä-{number}.jsonl"})


def tamper(db_url: str, sql: str, **params) -> None:
    with engine_for(db_url).begin() as connection:
        connection.execute(text(sql), params)


def first_problem(db_url: str):
    report = verify(db_url)
    assert not report.ok
    return report.problems[0]


def test_recorded_entries_chain_by_hash_and_verify(db_url):
    append(db_url, 5)
    newest_first = entries(db_url=db_url)
    assert [entry.seq for entry in newest_first] == [5, 4, 3, 2, 1]
    oldest_first = newest_first[::-1]
    assert oldest_first[0].prev_hash == "0" * 64
    for previous, entry in zip(oldest_first, oldest_first[1:], strict=False):
        assert entry.prev_hash == previous.hash
    for entry in oldest_first:
        fields = entry.to_dict()
        assert fields.pop("hash") == entry_hash(**fields)
    assert oldest_first[2].details == {"bytes": 2, "name": "ä-2.jsonl"} and oldest_first[2].actor == "cli"
    report = verify(db_url)
    assert report.ok and report.entries == 5 and report.problems == []


def test_an_entry_rolls_back_with_the_change_it_describes(db_url):
    append(db_url, 1)
    with pytest.raises(RuntimeError), session(engine_for(db_url)) as db:
        record(db, project="default", actor="cli", action="job.created", object_type="job", object_id="ftjob-1")
        raise RuntimeError("the state change failed")
    append(db_url, 1)
    assert [entry.seq for entry in entries(db_url=db_url)] == [2, 1]
    assert verify(db_url).ok


def test_an_edited_entry_is_named(db_url):
    append(db_url, 5)
    tamper(db_url, "UPDATE audit_log SET details_json = :edited WHERE seq = 3", edited='{"bytes":999}')
    problem = first_problem(db_url)
    assert (problem.kind, problem.seq) == ("changed", 3) and "entry 3 was changed" in problem.message


def test_a_removed_middle_entry_is_named(db_url):
    append(db_url, 5)
    tamper(db_url, "DELETE FROM audit_log WHERE seq = 3")
    problem = first_problem(db_url)
    assert (problem.kind, problem.seq) == ("removed", 3) and "entries 3 were removed" in problem.message


def test_a_forged_entry_is_named_even_with_a_correct_hash_of_its_own(db_url):
    append(db_url, 5)
    second = entries(db_url=db_url)[3]
    forged = {"seq": 6, "project": "default", "actor": "mallory", "action": "model.approved", "object_type": "model",
              "object_id": "ft:x", "details": {}, "created_at": datetime.now(UTC).isoformat(), "prev_hash": second.hash}
    tamper(db_url, "INSERT INTO audit_log (seq, project, actor, action, object_type, object_id, details_json, "
           "created_at, prev_hash, hash) VALUES (6, 'default', 'mallory', 'model.approved', 'model', 'ft:x', '{}', "
           ":created_at, :prev_hash, :hash)", created_at=datetime.fromisoformat(forged["created_at"]),
           prev_hash=second.hash, hash=entry_hash(**forged))
    problem = first_problem(db_url)
    assert (problem.kind, problem.seq) == ("inserted", 6) and "entry 6 does not follow entry 5" in problem.message


def test_a_log_cut_after_a_checkpoint_is_reported_as_truncated(db_url):
    append(db_url, 5)
    signed = checkpoint(db_url)
    assert signed["entries"] == 5 and signed["head_hash"] == entries(limit=1, db_url=db_url)[0].hash
    assert stat.S_IMODE(os.stat(signing_key_path()).st_mode) == 0o600
    append(db_url, 2)
    assert verify(db_url).ok
    tamper(db_url, "DELETE FROM audit_log WHERE seq >= 5")
    problem = first_problem(db_url)
    assert (problem.kind, problem.seq, problem.checkpoint) == ("truncated", 5, signed["id"])
    assert "ends at entry 4 but checkpoint" in problem.message and "covers 5 entries" in problem.message


def test_a_log_rewritten_with_valid_hashes_fails_its_signed_checkpoint(db_url):
    append(db_url, 3)
    checkpoint(db_url)
    tamper(db_url, "DELETE FROM audit_log")
    append(db_url, 3, project="other")  # a whole new, internally consistent chain of the same length
    problem = first_problem(db_url)
    assert (problem.kind, problem.seq) == ("rewritten", 3)


def test_an_altered_checkpoint_signature_is_reported(db_url):
    append(db_url, 2)
    signed = checkpoint(db_url)
    flipped = ("0" if signed["signature"][0] != "0" else "1") + signed["signature"][1:]
    tamper(db_url, "UPDATE audit_checkpoints SET signature = :flipped", flipped=flipped)
    problem = first_problem(db_url)
    assert (problem.kind, problem.checkpoint) == ("bad_signature", signed["id"])
    assert "does not verify" in problem.message


def test_a_checkpoint_re_signed_with_another_key_is_reported(db_url, tmp_path, monkeypatch):
    append(db_url, 2)
    checkpoint(db_url)
    monkeypatch.setenv("HONE_AUDIT_KEY", str(tmp_path / "mallory.key"))
    checkpoint(db_url)  # valid signature, but not by the key the server keeps
    monkeypatch.delenv("HONE_AUDIT_KEY")
    report = verify(db_url)
    assert report.key_checked and [problem.kind for problem in report.problems] == ["foreign_key"]


def test_concurrent_writers_extend_one_chain(db_url):
    engine_for(db_url)  # migrate once, before the threads start
    failures = []

    def writer(name: str) -> None:
        try:
            append(db_url, 25, project=name)
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            failures.append(error)

    threads = [threading.Thread(target=writer, args=(f"p{number}",)) for number in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    report = verify(db_url)
    assert report.ok and report.entries == 100
    assert [entry.seq for entry in entries(limit=100, db_url=db_url)] == list(range(100, 0, -1))


def test_export_writes_hashed_json_lines_filtered_by_project_and_time(db_url, tmp_path):
    append(db_url, 2, project="a")
    append(db_url, 1, project="b")
    out = tmp_path / "audit.jsonl"
    assert export(out, project="a", db_url=db_url) == 2
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [line["seq"] for line in lines] == [1, 2] and all(len(line["hash"]) == 64 for line in lines)
    assert lines[1]["prev_hash"] == lines[0]["hash"]
    assert export(out, since=datetime.now(UTC) + timedelta(minutes=1), db_url=db_url) == 0
    assert export(out, since="2000-01-01", db_url=db_url) == 3


def test_canonical_json_is_sorted_compact_utf8_and_refuses_nan():
    assert canonical_json({"b": [1.0, 2.5, None, True], "a": "é"}) == '{"a":"é","b":[1,2.5,null,true]}'.encode()
    with pytest.raises(HoneError):
        canonical_json({"x": float("nan")})


def test_cli_verify_exits_1_on_tampering_and_the_other_commands_work(db_url, tmp_path):
    append(db_url, 3)
    intact = runner.invoke(app, ["audit", "verify", "--db", db_url])
    assert intact.exit_code == 0, intact.output
    assert "3 entries" in intact.output
    signed = json.loads(runner.invoke(app, ["audit", "checkpoint", "--db", db_url, "--json"]).stdout)
    assert signed["entries"] == 3
    listed = json.loads(runner.invoke(app, ["audit", "list", "--limit", "2", "--db", db_url, "--json"]).stdout)
    assert [entry["seq"] for entry in listed["entries"]] == [3, 2]
    out = tmp_path / "out.jsonl"
    exported = runner.invoke(app, ["audit", "export", "--out", str(out), "--project", "default", "--db", db_url])
    assert exported.exit_code == 0 and len(out.read_text().splitlines()) == 3

    tamper(db_url, "UPDATE audit_log SET actor = 'someone-else' WHERE seq = 2")
    tampered = runner.invoke(app, ["audit", "verify", "--db", db_url])
    assert tampered.exit_code == 1 and "entry 2 was changed" in tampered.output
    report = json.loads(runner.invoke(app, ["audit", "verify", "--db", db_url, "--json"]).stdout)
    assert not report["ok"] and report["problems"][0]["seq"] == 2
