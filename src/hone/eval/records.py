"""Evaluations on record: the verdicts model versions carry (`version_evaluations` rows) and their full reports.

A row is written by the evaluation after training (against the base model), by `hone registry evaluate` and by
the loop (against another version). Its summary keeps the verdict and reasons; the full report (every candidate,
metric, CI and reply) stays on disk as report.json, where the row's summary says: `report_json` (an absolute
path) or `report` (relative to the job's folder, the parent of the version's run folder). Ids are `eval-N`,
N the row's number.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from hone.errors import NotFoundError
from hone.store import engine_for, session
from hone.store.tables import ModelVersion, VersionEvaluation, iso_utc

ID_PREFIX = "eval-"
_ID = re.compile(r"^eval-([1-9][0-9]{0,17})$")
REPORT_NAME = "report.json"


@dataclass(frozen=True)
class EvaluationRecord:
    """One recorded evaluation: which version, against what (None: the base model), its summary, and where its
    full report was written (None when the summary names none)."""

    id: str
    project: str
    version: str
    model: str | None
    against: str | None
    verdict: str | None
    summary: dict[str, Any]
    actor: str | None
    created_at: str
    report_path: Path | None

    def has_report(self) -> bool:
        """Whether the full report is still on disk (without reading it)."""
        return self.report_path is not None and self.report_path.is_file()

    def report(self) -> dict[str, Any] | None:
        """The full report (report.json), or None when it is gone from disk or unreadable."""
        if not self.has_report():
            return None
        try:
            return json.loads(self.report_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None


def _report_path(summary: dict[str, Any], run_dir: str | None) -> Path | None:
    """Where the row's summary says the report is; only a file named report.json counts."""
    if summary.get("report_json"):
        path = Path(summary["report_json"])
    elif summary.get("report") and run_dir:
        path = Path(run_dir).parent / summary["report"]  # a job's report path is relative to its folder
    else:
        return None
    return path if path.name == REPORT_NAME else None


def _record(row: VersionEvaluation, version: ModelVersion | None) -> EvaluationRecord:
    summary = json.loads(row.summary_json)
    return EvaluationRecord(
        id=f"{ID_PREFIX}{row.id}", project=row.project, version=row.version_name,
        model=version.model if version else None, against=row.against_version, verdict=row.verdict, summary=summary,
        actor=row.actor, created_at=iso_utc(row.created_at),
        report_path=_report_path(summary, version.run_dir if version else None))


def list_evaluations(project: str, db_url: str | None = None, *, version: str | None = None) -> list[EvaluationRecord]:
    """The project's recorded evaluations (of one version when `version` is given), newest first."""
    query = (select(VersionEvaluation, ModelVersion)
             .outerjoin(ModelVersion, ModelVersion.name == VersionEvaluation.version_name)
             .where(VersionEvaluation.project == project)
             .order_by(VersionEvaluation.created_at.desc(), VersionEvaluation.id.desc()))
    if version is not None:
        query = query.where(VersionEvaluation.version_name == version)
    with session(engine_for(db_url)) as db:
        return [_record(row, found) for row, found in db.execute(query)]


def get_evaluation(project: str, evaluation_id: str, db_url: str | None = None) -> EvaluationRecord:
    """One recorded evaluation of the project by its id (`eval-N`); NotFoundError for an unknown id or another
    project's."""
    match = _ID.match(evaluation_id)
    with session(engine_for(db_url)) as db:
        row = db.get(VersionEvaluation, int(match.group(1))) if match else None
        if row is None or row.project != project:
            raise NotFoundError(f"The evaluation '{evaluation_id}' does not exist or you do not have access to it",
                                param="evaluation_id", code="evaluation_not_found")
        version = db.scalar(select(ModelVersion).where(ModelVersion.name == row.version_name))
        return _record(row, version)
