"""Challenger against champion: evaluate one version against the version an alias points to, and attach the verdict.

The promotion policy asks for SHIP against the alias's current version; this runs `hone eval` with both versions'
adapters on the same base (the current one as the baseline), forgetting probes included, on the test file given
(by default the held-out split of the version's job), and records the verdict on the version (audited).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from hone.errors import HoneError
from hone.eval.config import CandidateConfig, EvalConfig
from hone.registry.promotion import Promotions, record_evaluation
from hone.store import session


def _training_data(run_dir: Path) -> Path | None:
    """The run's training file (for the memorization check), when it is a plain file still on disk."""
    config_path = run_dir / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    train = ((config or {}).get("data") or {}).get("train")
    return Path(train) if train and Path(train).is_file() else None


def evaluate_against(project: str, model: str, version: str | int, against: str, *, data: Path, out: Path,
                     db_url: str | None = None, max_examples: int = 100, probe_limit: int = 30,
                     actor: str | None = None, show_progress: bool = False) -> dict[str, Any]:
    """Evaluate `model` `version` against `against` (an alias of the model, or a version number) on `data`; write
    the reports to `out`, record the verdict on the version and return its summary."""
    from hone.eval.run import evaluate

    promotions = Promotions(db_url)
    with session(promotions.engine) as db:
        candidate = promotions.version(db, project, model, version)
        target = promotions.alias_target(db, project, model, against) if not str(against).lstrip("v").isdigit() \
            else None
        baseline = promotions.version(db, project, model, target or against)
        if baseline.name == candidate.name:
            raise HoneError(f"{model} version {candidate.version} is what {against} points to: nothing to compare")
        pair = [(f"v{baseline.version}", Path(baseline.run_dir)), (f"v{candidate.version}", Path(candidate.run_dir))]
    if not Path(data).is_file():
        raise HoneError(f"the test file {data} does not exist", hint="give one with --data")
    names = [name for name, _ in pair]
    settings = EvalConfig(data=Path(data), out=Path(out), limit=max_examples, train=_training_data(pair[1][1]),
                          candidates=[CandidateConfig(name=name, adapter=run_dir) for name, run_dir in pair],
                          forgetting={"enabled": probe_limit > 0, "limit": probe_limit or None},
                          verdict={"baseline": names[0], "candidate": names[1]})
    report = evaluate(settings, show_progress=show_progress)
    verdict = report["verdict"]
    summary = {"verdict": verdict["decision"], "reasons": verdict["reasons"], "notes": verdict["notes"],
               "primary_metric": verdict["primary_metric"], "baseline": names[0], "candidate": names[1],
               "gain": verdict.get("gain"), "ci_low": verdict.get("ci_low"), "ci_high": verdict.get("ci_high"),
               "report_json": report["paths"]["json"], "report_html": report["paths"]["html"],
               "examples": len(report["examples"])}
    with session(promotions.engine) as db:
        record_evaluation(db, project=project, version_name=candidate.name, against=baseline.name, summary=summary,
                          actor=actor)
    return summary
