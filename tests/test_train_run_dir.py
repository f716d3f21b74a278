"""`hone train` around its run directory: an output_dir that cannot hold runs, and resuming a finished run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_train import make_config
from typer.testing import CliRunner

from hone.cli import app
from hone.errors import HoneError
from hone.train.config import load_config
from hone.train.run import train


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir) -> Path:
    """A tiny run trained to its end: 24 examples, batch 4, one epoch = 6 steps, a checkpoint at step 6."""
    folder = tmp_path_factory.mktemp("finished")
    return train(load_config(make_config(folder, tiny_model_dir, epochs=1)), show_progress=False)


@pytest.mark.parametrize("inside", ["", "sub/runs"])
def test_output_dir_that_is_a_file_is_named_in_the_error(tmp_path, tiny_model_dir, inside):
    config = make_config(tmp_path, tiny_model_dir)
    (tmp_path / "taken").write_text("not a folder")
    output_dir = tmp_path / "taken" / inside if inside else tmp_path / "taken"
    result = CliRunner().invoke(app, ["train", str(config), "--set", f"output_dir={output_dir}"])
    assert isinstance(result.exception, HoneError), result.output
    assert str(result.exception.message) == f"output_dir {output_dir}: {tmp_path / 'taken'} is a file, not a folder"
    assert "output_dir" in result.exception.hint


def test_resuming_a_finished_run_says_so_and_changes_nothing(finished_run):
    before = {p.name: p.read_bytes() for p in (finished_run / "summary.json", finished_run / "metrics.jsonl")}
    with pytest.raises(HoneError, match=r"already finished at step 6 of 6; nothing to resume"):
        train(None, resume_dir=finished_run, show_progress=False)
    assert before == {p.name: p.read_bytes() for p in (finished_run / "summary.json", finished_run / "metrics.jsonl")}
    result = CliRunner().invoke(app, ["train", "--resume", str(finished_run), "--nproc", "2"])
    assert isinstance(result.exception, HoneError) and "nothing to resume" in result.exception.message

    done = subprocess.run([sys.executable, "-m", "hone", "train", "--resume", str(finished_run)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert f"the run in {finished_run} already finished at step 6 of 6; nothing to resume" in done.stderr
    assert "Traceback" not in done.stderr


def test_run_killed_after_its_last_checkpoint_resumes_to_a_complete_summary(finished_run, tmp_path):
    killed = tmp_path / "killed"
    shutil.copytree(finished_run, killed)
    (killed / "summary.json").unlink()  # killed after the last checkpoint, before the summary was written
    result = CliRunner().invoke(app, ["train", "--resume", str(killed)])
    assert result.exit_code == 0, result.output
    last = json.loads((killed / "metrics.jsonl").read_text().splitlines()[-1])
    summary = json.loads((killed / "summary.json").read_text())
    assert (summary["steps"], summary["total_steps"], summary["interrupted"]) == (6, 6, False)
    original = json.loads((finished_run / "summary.json").read_text())["final_train_loss"]
    assert summary["final_train_loss"] == last["train_loss"] == pytest.approx(original, abs=1e-6)  # logged rounded
    assert f"final train loss {last['train_loss']:.4f}" in result.stdout
