"""`python -m hone.jobs.child JOB_DIR`: one job's training, in a process of its own.

A crash or out-of-memory here never takes the server or the worker down. The outcome goes to
JOB_DIR/outcome.json: `{"ok": true}`, or `{"ok": false, "error": ...}` with a message fit for the user.
SIGTERM (cancel, pause) makes the trainer write a checkpoint after the current step and exit.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

from hone.errors import HoneError
from hone.jobs.service import JOB_SETTINGS

OUTCOME = "outcome.json"


def run(job_folder: Path) -> dict:
    """Train the job in `job_folder` (continuing from its newest checkpoint) and return the outcome."""
    from hone.train.config import load_config
    from hone.train.run import finished_summary, train

    try:
        run_dir = job_folder / "run"
        if finished_summary(run_dir) is None:  # else it trained before its worker could report it
            train(load_config(job_folder / "config.yaml"), run_dir=run_dir, show_progress=False)
        if json.loads((run_dir / "summary.json").read_text()).get("interrupted"):
            return {"ok": True, "interrupted": True}
        return {"ok": True, "interrupted": False, "evaluation": evaluate(job_folder, run_dir)}
    except HoneError as error:
        return {"ok": False, "error": error.message, "hint": error.hint}
    except Exception as error:  # the log keeps the traceback; the job shows one line without server paths
        traceback.print_exc()
        return {"ok": False, "error": f"training stopped with {error.__class__.__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''}".rstrip(": ")}


def evaluate(job_folder: Path, run_dir: Path) -> dict | None:
    """The evaluation after training (`hone.eval.default`), when the job has a test set; a failure here is
    reported on the job without failing it, since the model itself trained well."""
    settings = json.loads((job_folder / JOB_SETTINGS).read_text()) if (job_folder / JOB_SETTINGS).is_file() else {}
    if not settings.get("test_file"):
        return None
    from hone.eval.default import evaluate_run

    options = settings["eval"]
    try:
        result = evaluate_run(run_dir, job_folder / settings["test_file"], max_examples=options["max_examples"],
                              probe_limit=options["probe_limit"])
    except HoneError as error:
        return {"error": error.message}
    except Exception as error:
        traceback.print_exc()
        return {"error": f"the evaluation stopped with {error.__class__.__name__}"}
    shown = result.to_dict()
    return {**{key: shown[key] for key in ("verdict", "reasons", "primary_metric", "primary_metric_reason", "figures",
                                          "notes", "warnings")},
            "report": str(result.report_json.relative_to(job_folder))}


def main() -> None:
    job_folder = Path(sys.argv[1])
    outcome = run(job_folder)
    (job_folder / OUTCOME).write_text(json.dumps(outcome))
    sys.exit(0 if outcome["ok"] else 1)


if __name__ == "__main__":
    main()
