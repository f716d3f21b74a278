"""`hone data prepare`: near duplicates of real paragraphs, and the staging folders a killed run leaves behind."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hone.data.curate.dedup import near_dedup
from hone.data.curate.prepare import PrepareConfig, prepare
from hone.data.formats import Example

REPLY = ("Thank you for reaching out about the invoice you received last week. After reviewing your account, we "
         "found that the annual plan was renewed automatically on the first of the month, which is why the charge "
         "appeared on your card. Because you contacted us within the fourteen day window, you are eligible for a "
         "full refund. I have started the refund today, and the money should be back in your account within five "
         "to seven business days, depending on your bank.")
APPENDED = " If you have any other questions, just reply to this email and we will be happy to help."
DIFFERENT = ("Thank you for reaching out about the export feature. The CSV export is limited to the first ten "
             "thousand rows on the starter plan, which is why your file stopped at that point. You can split the "
             "export by date range from the filter menu, or move to the business plan, where exports have no row "
             "limit and can be scheduled to arrive by email every morning. Let me know which option suits your "
             "team and I will walk you through the setup.")


def reply(text: str, line: int) -> Example:
    messages = [{"role": "user", "content": "Why was I charged?"}, {"role": "assistant", "content": text}]
    return Example(messages=messages, source="tickets.jsonl", line=line, format="chat")


@pytest.mark.parametrize("word", [0, 17, 40, 63, 80])
def test_copy_with_an_uppercased_word_and_an_appended_sentence_is_a_near_duplicate(word):
    words = REPLY.split()
    assert len(words) == 81
    words[word] = words[word].upper()
    copy = " ".join(words) + APPENDED  # 81 of 99 word 5-grams shared: Jaccard 0.82

    kept, report = near_dedup([reply(REPLY, 1), reply(copy, 2), reply(DIFFERENT, 3)], threshold=0.8)

    assert [e.line for e in kept] == [1, 3]
    assert report.removed[0].line == 2 and report.removed[0].detail == "0.82 similar to tickets.jsonl:1"
    kept, _ = near_dedup([reply(REPLY, 1), reply(copy, 2)], threshold=0.85)
    assert [e.line for e in kept] == [1, 2]  # the similarity is exact, not an estimate that may land either side


KILLED_RUN = """
import os, signal, sys
from hone.data.curate import prepare as module

module._move_into_place = lambda *args: os.kill(os.getpid(), signal.SIGKILL)  # killed with the files written
module.prepare(module.PrepareConfig(inputs=[{"path": sys.argv[1]}], out=sys.argv[2], pii=None))
"""


def hidden(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.name.startswith(".")}


def test_next_run_removes_staging_folders_of_killed_runs_only(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"ticket {i}: where is parcel {i * 37}?"},
                          {"role": "assistant", "content": f"parcel {i * 37} left depot {i % 7} on day {i}"}]}
            for i in range(20)]
    data = tmp_path / "raw.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "ds"
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, str(data), str(out)], capture_output=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    (leftover,) = hidden(tmp_path)
    assert (tmp_path / leftover / "train.jsonl").is_file() and not out.exists()

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        dead_pid = leftover.split(".staging-")[1].split("@")[0]
        live = leftover.replace(f"-{dead_pid}@", f"-{sleeper.pid}@")  # a run still writing
        other_host = leftover.replace(f"@{socket.gethostname()}-", "@another-host-")  # its owner is elsewhere
        other_out = leftover.replace(".ds.", ".ds2.")  # a staging folder of another --out
        keep = {live, other_host, other_out, ".ds-notes"}
        for name in keep:
            (tmp_path / name).mkdir()

        prepare(PrepareConfig(inputs=[{"path": data}], out=out, pii=None))

        assert hidden(tmp_path) == keep
        assert json.loads((out / "manifest.json").read_text())["counts"]["ingested"] == 20
    finally:
        sleeper.kill()
        sleeper.wait()
