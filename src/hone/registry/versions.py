"""Registered model versions: what `/v1/models`, `hone registry list/show` and the server's model lookup read.

A succeeded job registers `ft:{base}:{project}:{suffix}:{id}` with the training file's sha256, the dataset
id, the full resolved config, the base model's fingerprint, the run's metrics, its checkpoints and the
eval verdict when there is one. Weights are matched to a served base by that fingerprint, never by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from hone import audit
from hone.errors import NotFoundError
from hone.eval.records import ID_PREFIX as EVALUATION_ID_PREFIX
from hone.registry.promotion import record_evaluation
from hone.store import engine_for, session
from hone.store.tables import (
    AliasMove,
    Approval,
    FineTuningJob,
    JobCheckpoint,
    ModelAlias,
    ModelVersion,
    PromotionRequest,
    StoredFile,
    VersionEvaluation,
    iso_utc,
    utc_now,
)


@dataclass(frozen=True)
class Servable:
    """A registered model (or one of its job's checkpoints) that a server can load: where and on which base."""

    name: str
    project: str
    weights_dir: Path
    base_model: str
    base_fingerprint: str
    created_at: int


def _version_dict(version: ModelVersion) -> dict[str, Any]:
    return {"name": version.name, "project": version.project, "base_model": version.base_model,
            "base_fingerprint": version.base_fingerprint, "job_id": version.job_id,
            "training_file_sha256": version.training_file_sha256, "dataset_id": version.dataset_id,
            "config": json.loads(version.config_json), "metrics": json.loads(version.metrics_json),
            "eval": json.loads(version.eval_json) if version.eval_json else None, "verdict": version.verdict,
            "run_dir": version.run_dir, "weights_dir": version.weights_dir, "created_at": iso_utc(version.created_at),
            "model": version.model, "version": version.version, "author": version.author}


class Registry:
    """Model versions of every project; each call is scoped to one project (None: all, for admins and the CLI)."""

    def __init__(self, db_url: str | None = None):
        self.db_url = db_url
        self.engine = engine_for(db_url)

    def project_settings(self, project: str) -> dict[str, Any]:
        """The project's settings (intended purpose, provider, promotion policy) as plain JSON types."""
        from hone.registry.projects import Projects

        return Projects(self.db_url).settings(project).model_dump(mode="json")

    def resolve(self, project: str, model: str, version: str | int | None = None) -> str:
        """The full name of a version: `model` itself when it is one, `MODEL@ALIAS`, or MODEL and its number."""
        from hone.registry.promotion import Promotions

        promotions = Promotions(self.db_url)
        if version is None and "@" in model:
            name, alias = model.rsplit("@", 1)
            return promotions.resolve_alias(project, name, alias)
        if version is None:
            return self._name_in(project, model)
        with session(self.engine) as db:
            return promotions.version(db, project, model, version).name

    def _name_in(self, project: str, name: str) -> str:
        with session(self.engine) as db:
            return self._version(db, project, name).name

    def register(self, db, *, project: str, name: str, base_model: str, base_fingerprint: str, job_id: str | None,
                 training_file_sha256: str | None, dataset_id: str | None, config: dict, metrics: dict,
                 run_dir: Path, weights_dir: Path, eval_report: dict | None = None,
                 verdict: str | None = None, actor: str | None = None, model: str | None = None,
                 author: str | None = None) -> int:
        """Add a version inside the caller's transaction (the job's success, its version, its evaluation and their
        audit entries land together); `model` (default: the name) groups versions, numbered 1, 2, ...
        Returns the version's number."""
        model = model or name
        number = (db.scalar(select(func.max(ModelVersion.version)).where(
            ModelVersion.project == project, ModelVersion.model == model)) or 0) + 1
        db.add(ModelVersion(project=project, name=name, model=model, version=number, author=author,
                            base_model=base_model, base_fingerprint=base_fingerprint,
                            job_id=job_id, training_file_sha256=training_file_sha256, dataset_id=dataset_id,
                            config_json=json.dumps(config), metrics_json=json.dumps(metrics),
                            eval_json=json.dumps(eval_report) if eval_report is not None else None,
                            verdict=verdict, run_dir=str(run_dir), weights_dir=str(weights_dir),
                            created_at=utc_now()))
        audit.record(db, project=project, actor=actor, action="model.registered", object_type="model_version",
                     object_id=name, details={"model": model, "version": number, "job_id": job_id,
                                              "base_fingerprint": base_fingerprint,
                                              "training_file_sha256": training_file_sha256,
                                              "dataset_id": dataset_id, "verdict": verdict})
        if eval_report is not None and "error" not in eval_report:
            record_evaluation(db, project=project, version_name=name, against=None, summary=eval_report, actor=actor)
        return number

    def list(self, project: str | None = None) -> list[dict[str, Any]]:
        """Every version, newest first."""
        with session(self.engine) as db:
            query = select(ModelVersion).order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc())
            if project is not None:
                query = query.where(ModelVersion.project == project)
            return [_version_dict(v) for v in db.scalars(query)]

    def _version(self, db, project: str | None, name: str) -> ModelVersion:
        version = db.scalar(select(ModelVersion).where(ModelVersion.name == name))
        if version is None or (project is not None and version.project != project):
            raise NotFoundError(f"The model '{name}' does not exist or you do not have access to it",
                                param="model", code="model_not_found")
        return version

    def show(self, name: str, project: str | None = None) -> dict[str, Any]:
        """One version with its lineage chain: dataset -> job -> run -> weights -> eval."""
        with session(self.engine) as db:
            version = self._version(db, project, name)
            shown = _version_dict(version)
            job = db.get(FineTuningJob, version.job_id) if version.job_id else None
            training = db.get(StoredFile, job.training_file) if job else None
            checkpoints = db.scalars(select(JobCheckpoint).where(JobCheckpoint.job_id == version.job_id)
                                     .order_by(JobCheckpoint.step)).all() if job else []
            governance = self._governance(db, version)
        replay = shown["metrics"].get("replay") or {}
        shown["lineage"] = [
            {"stage": "dataset", "training_file": job.training_file if job else None,
             "filename": training.filename if training else None, "sha256": version.training_file_sha256,
             "dataset_id": version.dataset_id, "replay_examples": replay.get("examples"),
             "replay_fingerprint": replay.get("fingerprint")},
            {"stage": "job", "id": version.job_id, "status": job.status if job else None,
             "created_at": iso_utc(job.created_at) if job else None,
             "finished_at": iso_utc(job.finished_at) if job else None},
            {"stage": "run", "run_dir": version.run_dir, "base_model": version.base_model,
             "base_fingerprint": version.base_fingerprint, "method": shown["config"].get("method")},
            {"stage": "weights", "weights_dir": version.weights_dir,
             "checkpoints": [c.fine_tuned_model_checkpoint for c in checkpoints]},
            {"stage": "eval", "verdict": version.verdict, "report": bool(version.eval_json)},
        ]
        return shown | governance

    def _governance(self, db, version: ModelVersion) -> dict[str, Any]:
        """The aliases pointing at a version, the decisions on its promotions, its aliases' moves to or from it, and
        the evaluations it carries."""
        aliases = db.scalars(select(ModelAlias.alias).where(ModelAlias.version_name == version.name)
                             .order_by(ModelAlias.alias)).all()
        requests = {r.id: r for r in db.scalars(select(PromotionRequest).where(
            PromotionRequest.version_name == version.name))}
        approvals = db.scalars(select(Approval).where(Approval.request_id.in_(requests)).order_by(Approval.id)) \
            if requests else []
        moves = db.scalars(select(AliasMove).where(AliasMove.project == version.project,
                                                   AliasMove.model == version.model)
                           .where((AliasMove.to_version == version.name) | (AliasMove.from_version == version.name))
                           .order_by(AliasMove.id))
        evaluations = db.scalars(select(VersionEvaluation).where(VersionEvaluation.version_name == version.name)
                                 .order_by(VersionEvaluation.id))
        return {
            "aliases": list(aliases),
            "approvals": [{"alias": requests[a.request_id].alias, "request_id": a.request_id, "decision": a.decision,
                           "actor": a.actor, "comment": a.comment, "created_at": iso_utc(a.created_at)}
                          for a in approvals],
            "alias_history": [{"alias": m.alias, "action": m.action, "from_version": m.from_version,
                               "to_version": m.to_version, "actor": m.actor, "reason": m.reason,
                               "created_at": iso_utc(m.created_at)} for m in moves],
            "evaluations": [{"id": f"{EVALUATION_ID_PREFIX}{e.id}", "against_version": e.against_version,
                             "verdict": e.verdict, "actor": e.actor,
                             "created_at": iso_utc(e.created_at), "summary": json.loads(e.summary_json)}
                            for e in evaluations],
        }

    def servable(self, name: str, project: str | None = None) -> Servable:
        """The weights a model name stands for: a registered version, or `...:ckpt-step-N` of its job."""
        with session(self.engine) as db:
            version = db.scalar(select(ModelVersion).where(ModelVersion.name == name))
            if version is not None and (project is None or version.project == project):
                return Servable(name, version.project, Path(version.weights_dir), version.base_model,
                                version.base_fingerprint, int(version.created_at.timestamp()))
            checkpoint = db.scalar(select(JobCheckpoint).where(JobCheckpoint.fine_tuned_model_checkpoint == name))
            job = db.get(FineTuningJob, checkpoint.job_id) if checkpoint else None
            if checkpoint is None or job is None or (project is not None and job.project != project):
                raise NotFoundError(f"The model '{name}' does not exist or you do not have access to it",
                                    param="model", code="model_not_found")
            owner = db.scalar(select(ModelVersion).where(ModelVersion.job_id == job.id))
        from hone.models import fingerprint

        base_fingerprint = owner.base_fingerprint if owner else fingerprint(job.base_model)
        return Servable(name, job.project, Path(checkpoint.path), job.base_model, base_fingerprint,
                        int(checkpoint.created_at.timestamp()))

    def servables(self, project: str | None = None) -> list[Servable]:
        """Every registered version (not checkpoints), newest first: the fine-tuned models `/v1/models` lists."""
        with session(self.engine) as db:
            query = select(ModelVersion).order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc())
            if project is not None:
                query = query.where(ModelVersion.project == project)
            return [Servable(v.name, v.project, Path(v.weights_dir), v.base_model, v.base_fingerprint,
                             int(v.created_at.timestamp())) for v in db.scalars(query)]
