"""The fine-tuning jobs API in Python: what `POST /v1/fine_tuning/jobs` and `hone jobs ...` both call.

A job moves `validating_files -> queued -> running -> succeeded | failed | cancelled`, and may be
`paused` and resumed. Creating a job checks its files at once (a broken file fails the job with
`invalid_training_file` naming the line); a worker (`hone.jobs.worker`) then claims it, trains it in a
child process and reports events, metrics and checkpoints here.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from hone import audit
from hone.data.formats import HOLDS
from hone.data.validate import MIN_EXAMPLES
from hone.errors import NotFoundError, RequestError
from hone.home import hone_home
from hone.jobs.files import FileObject, FileStore
from hone.jobs.ids import new_id, page_limit
from hone.jobs.spec import (
    JobEval,
    JobRequest,
    check_hone_settings,
    hone_method,
    job_eval,
    method_object,
    resolve_base,
    resolved_hyperparameters,
    train_config,
)
from hone.store import engine_for, session
from hone.store.tables import FineTuningJob, JobCheckpoint, JobEvent, utc_now
from hone.train.config import dump_config

ACTIVE = ("validating_files", "queued", "running", "paused")
FINISHED = ("succeeded", "failed", "cancelled")
CHECKPOINTS_PER_RUN = 10
HELD_OUT = "heldout.jsonl"
JOB_SETTINGS = "job.json"  # what the training process does besides training (the evaluation after it)
MIN_HELD_OUT, MAX_HELD_OUT = 10, 100
MAX_METRIC_POINTS = 10_000  # one page of a job's chart points: every step of most runs


def jobs_dir() -> Path:
    path = hone_home() / "jobs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def job_dir(job_id: str) -> Path:
    """The job's own folder: its copy of the data, the training config, the run and the training log."""
    return jobs_dir() / job_id


def model_name(job: FineTuningJob) -> str:
    """`ft:{base}:{project}:{suffix}:{id}`, as OpenAI names fine-tuned models (id: the job id's last 8)."""
    return f"ft:{job.model}:{job.project}:{job.suffix or ''}:{job.id[-8:]}"


def checkpoint_name(job: FineTuningJob, step: int) -> str:
    return f"{model_name(job)}:ckpt-step-{step}"


def _epoch(moment) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def job_object(job: FineTuningJob) -> dict[str, Any]:
    """The job in OpenAI's `fine_tuning.job` shape, plus hone's settings under `hone`."""
    method = json.loads(job.method_json)
    hyper = method[method["type"]]["hyperparameters"]
    return {
        "object": "fine_tuning.job", "id": job.id, "model": job.model, "created_at": _epoch(job.created_at),
        "finished_at": _epoch(job.finished_at), "fine_tuned_model": job.fine_tuned_model,
        "organization_id": job.project, "result_files": json.loads(job.result_files_json), "status": job.status,
        "validation_file": job.validation_file, "training_file": job.training_file,
        "hyperparameters": {k: v for k, v in hyper.items() if k != "beta"}, "trained_tokens": job.trained_tokens,
        "error": json.loads(job.error_json) if job.error_json else None, "user_provided_suffix": job.suffix,
        "seed": job.seed, "estimated_finish": _epoch(job.estimated_finish), "integrations": [],
        "metadata": json.loads(job.metadata_json) or None, "method": method,
        "hone": json.loads(job.hone_json),
        "evaluation": json.loads(job.evaluation_json) if job.evaluation_json else None,
    }


def event_object(event: JobEvent) -> dict[str, Any]:
    return {"object": "fine_tuning.job.event", "id": event.id, "created_at": _epoch(event.created_at),
            "level": event.level, "message": event.message, "type": event.type,
            "data": json.loads(event.data_json) if event.data_json else None}


def checkpoint_object(checkpoint: JobCheckpoint) -> dict[str, Any]:
    return {"object": "fine_tuning.job.checkpoint", "id": checkpoint.id,
            "created_at": _epoch(checkpoint.created_at),
            "fine_tuned_model_checkpoint": checkpoint.fine_tuned_model_checkpoint,
            "fine_tuning_job_id": checkpoint.job_id, "step_number": checkpoint.step,
            "metrics": json.loads(checkpoint.metrics_json)}


def metric_point(created_at, data_json: str) -> dict[str, Any]:
    """A metrics event's figures as one point of the job's loss chart."""
    return {**json.loads(data_json), "created_at": _epoch(created_at)}


@dataclass
class Page:
    """One page of a list: OpenAI's `{object: list, data, has_more}`."""

    data: list[dict[str, Any]]
    has_more: bool

    def to_dict(self) -> dict[str, Any]:
        return {"object": "list", "data": self.data, "has_more": self.has_more}


def add_event(db, job_id: str, message: str, *, level: str = "info", type: str = "message",
              data: dict | None = None) -> None:
    """Append an event to a job inside the caller's transaction."""
    db.add(JobEvent(id=new_id("ftevent-"), job_id=job_id, level=level, message=message, type=type,
                    data_json=json.dumps(data) if data is not None else None, created_at=utc_now()))


def audit_job(db, job: FineTuningJob, action: str, actor: str | None, **details) -> None:
    """The job's state change in the audit log, in the caller's transaction."""
    audit.record(db, project=job.project, actor=actor, action=f"job.{action}", object_type="fine_tuning.job",
                 object_id=job.id, details=details or None)


def fail(db, job: FineTuningJob, code: str, message: str, param: str | None = None, actor: str | None = None) -> None:
    """Mark the job failed with OpenAI's error object, and say so in its events and the audit log."""
    job.status, job.finished_at, job.requested = "failed", utc_now(), None
    job.error_json = json.dumps({"code": code, "message": message, "param": param})
    add_event(db, job.id, f"The job failed: {message}", level="error")
    audit_job(db, job, "failed", actor, code=code)


def _copy_data(source: Path, target: Path) -> None:
    """The job's own copy of an uploaded file (a hard link where possible), so deleting the upload is safe."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


class JobService:
    """Fine-tuning jobs of every project in hone's database; each call is scoped to one project.

    `bases` maps names clients may send as `model` (e.g. "gpt-4o-mini-2024-07-18") to a local base.
    """

    def __init__(self, db_url: str | None = None, bases: dict[str, str] | None = None,
                 on_queued: Callable[[], None] | None = None):
        self.engine = engine_for(db_url)
        self.files = FileStore(db_url)
        self.bases = dict(bases or {})
        self.on_queued = on_queued or (lambda: None)  # e.g. wakes the server's own worker at once

    # ---- create ----

    def create(self, project: str, request: JobRequest, actor: str | None = None) -> dict[str, Any]:
        """Create a job and check its files at once: it is then `queued`, or `failed` saying what is wrong."""
        base = resolve_base(request.model, self.bases)
        hone = check_hone_settings(request.hone)
        training = self.files.get(project, request.training_file, param="training_file")
        validation = (self.files.get(project, request.validation_file, param="validation_file")
                      if request.validation_file else None)
        seed = request.seed if request.seed is not None else int.from_bytes(os.urandom(3), "big")
        job_id = new_id("ftjob-")
        folder = job_dir(job_id)
        # Checked now with stand-in paths, so a bad hone setting is a 400 at create, not a failed job later.
        train_config(request, base, hone, folder / "train.jsonl", folder / "valid.jsonl" if validation else None,
                     folder, seed)
        job = FineTuningJob(id=job_id, project=project, model=request.model, base_model=base,
                            training_file=training.id, validation_file=validation.id if validation else None,
                            suffix=request.suffix, seed=seed, metadata_json=json.dumps(request.metadata or {}),
                            method_json=json.dumps(method_object(request)), hone_json=json.dumps(hone),
                            status="validating_files", created_by=actor, created_at=utc_now())
        with session(self.engine) as db:
            db.add(job)
            add_event(db, job_id, f"Validating training file: {training.id}"
                      + (f" and validation file: {validation.id}" if validation else ""))
            audit_job(db, job, "created", actor, model=request.model, training_file=training.id,
                      validation_file=validation.id if validation else None, method=request.method_type)
        with session(self.engine) as db:
            job = db.get(FineTuningJob, job_id)
            self._validate(db, job, request, hone, training, validation, actor)
            created = job_object(job)
        self.on_queued()
        return created

    def _validate(self, db, job: FineTuningJob, request: JobRequest, hone: dict, training: FileObject,
                  validation: FileObject | None, actor: str | None) -> None:
        """Check the files against the method; prepare the job's folder and config, or fail the job."""
        wants_pairs = request.method_type == "dpo"
        for param, stored in (("training_file", training), ("validation_file", validation)):
            if stored is None:
                continue
            problem = self._file_problem(job.project, stored, wants_pairs)
            if problem:
                too_few, message = problem
                fail(db, job, "invalid_n_examples" if too_few else f"invalid_{param}", message, param, actor)
                return
        folder = job_dir(job.id)
        evaluation = job_eval(hone)
        source = self.files.path(job.project, training.id, "training_file")
        held_out = holdout_size(training.examples, evaluation) if evaluation.enabled and not validation else 0
        if held_out:
            split_off(source, folder / "train.jsonl", folder / HELD_OUT, held_out, job.seed)
            add_event(db, job.id, f"Held out {held_out} of {training.examples} training examples to evaluate the "
                      "fine-tune after training")
        else:
            _copy_data(source, folder / "train.jsonl")
        if validation:
            _copy_data(self.files.path(job.project, validation.id, "validation_file"), folder / "valid.jsonl")
        examples = training.examples - held_out
        hyper = resolved_hyperparameters(request, job.base_model, hone_method(request, hone), examples)
        config = train_config(request, job.base_model, _with_defaults(hone, examples, hyper),
                              folder / "train.jsonl",
                              folder / "valid.jsonl" if validation else None, folder, job.seed, hyper)
        (folder / "config.yaml").write_text(dump_config(config))
        test_file = (HELD_OUT if held_out else "valid.jsonl" if validation else None) if evaluation.enabled else None
        (folder / JOB_SETTINGS).write_text(json.dumps({"eval": evaluation.model_dump(), "test_file": test_file}))
        job.method_json = json.dumps(method_object(request, hyper))
        job.run_dir = str(folder / "run")
        job.status = "queued"
        add_event(db, job.id, "Files validated, moving job to queued state")
        audit_job(db, job, "queued", actor, hyperparameters=hyper, held_out=held_out)

    def _file_problem(self, project: str, stored: FileObject, wants_pairs: bool) -> tuple[bool, str] | None:
        """Why a file cannot train this job, naming the first broken line, as (too few examples?, message); or
        None when it can."""
        if stored.purpose != "fine-tune":
            return False, f"file {stored.id} has purpose {stored.purpose!r}; upload training data with purpose " \
                "'fine-tune'"
        if stored.errors:
            first = self.files.problems(project, stored.id)[0]
            where = f"line {first['line']}: {first['field']}: " if first["field"] else f"line {first['line']}: "
            return False, (f"file {stored.id} has {stored.errors} line(s) that cannot be used, the first at "
                           f"{where}{first['message']}")
        holds_pairs = stored.format == "dpo"
        if stored.examples and holds_pairs != wants_pairs:
            return False, (f"file {stored.id} holds {HOLDS[holds_pairs]}, but a "
                           f"{'dpo' if wants_pairs else 'supervised'} job needs {HOLDS[wants_pairs]}")
        if stored.examples < MIN_EXAMPLES:
            return True, (f"only {stored.examples} example(s) in file {stored.id}; fine-tuning needs at least "
                          f"{MIN_EXAMPLES}")
        return None

    # ---- read ----

    def _job(self, db, project: str, job_id: str) -> FineTuningJob:
        job = db.get(FineTuningJob, job_id) if isinstance(job_id, str) else None
        if job is None or job.project != project:
            raise NotFoundError(f"No fine-tuning job with id '{job_id}'", param="fine_tuning_job_id",
                                code="not_found")
        return job

    def get(self, project: str, job_id: str) -> dict[str, Any]:
        with session(self.engine) as db:
            return job_object(self._job(db, project, job_id))

    def list(self, project: str, after: str | None = None, limit: int | None = None,
             metadata: dict[str, str] | None = None) -> Page:
        """The project's jobs, newest first, after the job `after`; `metadata` keeps jobs tagged with every pair."""
        limit = page_limit(limit)
        with session(self.engine) as db:
            query = select(FineTuningJob).where(FineTuningJob.project == project)
            if after:
                cursor = self._job(db, project, after)
                query = query.where((FineTuningJob.created_at < cursor.created_at) | (
                    (FineTuningJob.created_at == cursor.created_at) & (FineTuningJob.id < cursor.id)))
            query = query.order_by(FineTuningJob.created_at.desc(), FineTuningJob.id.desc())
            found = []
            for job in db.scalars(query):  # metadata is JSON text: filtered here, page by page
                tags = json.loads(job.metadata_json)
                if all(tags.get(k) == v for k, v in (metadata or {}).items()):
                    found.append(job_object(job))
                    if len(found) > limit:
                        break
        return Page(found[:limit], len(found) > limit)

    def events(self, project: str, job_id: str, after: str | None = None, limit: int | None = None) -> Page:
        """The job's events, newest first, after the event `after`."""
        limit = page_limit(limit)
        with session(self.engine) as db:
            self._job(db, project, job_id)
            query = select(JobEvent).where(JobEvent.job_id == job_id)
            if after:
                cursor = db.scalar(select(JobEvent).where(JobEvent.id == after, JobEvent.job_id == job_id))
                if cursor is None:
                    raise NotFoundError(f"No event '{after}' in job '{job_id}'", param="after", code="not_found")
                query = query.where(JobEvent.seq < cursor.seq)
            rows = db.scalars(query.order_by(JobEvent.seq.desc()).limit(limit + 1)).all()
        return Page([event_object(e) for e in rows[:limit]], len(rows) > limit)

    def metrics(self, project: str, job_id: str, after_step: int | None = None, limit: int | None = None) -> Page:
        """The job's logged steps in step order (a chart's points), those after step `after_step` only."""
        limit = page_limit(limit, default=MAX_METRIC_POINTS, most=MAX_METRIC_POINTS)
        with session(self.engine) as db:
            self._job(db, project, job_id)
            rows = db.execute(select(JobEvent.created_at, JobEvent.data_json)
                              .where(JobEvent.job_id == job_id, JobEvent.type == "metrics")).all()
        points = sorted((metric_point(created_at, data_json) for created_at, data_json in rows if data_json),
                        key=lambda point: point["step"])  # step order, also when a resumed run logged late
        later = [point for point in points if after_step is None or point["step"] > after_step]
        return Page(later[:limit], len(later) > limit)

    def checkpoints(self, project: str, job_id: str, after: str | None = None, limit: int | None = None) -> Page:
        """The job's checkpoints, newest first, after the checkpoint `after`."""
        limit = page_limit(limit, default=10)
        with session(self.engine) as db:
            self._job(db, project, job_id)
            query = select(JobCheckpoint).where(JobCheckpoint.job_id == job_id)
            if after:
                cursor = db.scalar(select(JobCheckpoint).where(JobCheckpoint.id == after,
                                                               JobCheckpoint.job_id == job_id))
                if cursor is None:
                    raise NotFoundError(f"No checkpoint '{after}' in job '{job_id}'", param="after",
                                        code="not_found")
                query = query.where(JobCheckpoint.step < cursor.step)
            rows = db.scalars(query.order_by(JobCheckpoint.step.desc()).limit(limit + 1)).all()
        return Page([checkpoint_object(c) for c in rows[:limit]], len(rows) > limit)

    # ---- control ----

    def cancel(self, project: str, job_id: str, actor: str | None = None) -> dict[str, Any]:
        """Cancel a job: at once when it is not running, else its worker stops it within seconds (checkpoint kept)."""
        return self._control(project, job_id, "cancel", actor)

    def pause(self, project: str, job_id: str, actor: str | None = None) -> dict[str, Any]:
        """Pause a job: its worker stops it after writing a checkpoint; `resume` continues exactly there."""
        return self._control(project, job_id, "pause", actor)

    def resume(self, project: str, job_id: str, actor: str | None = None) -> dict[str, Any]:
        """Queue a paused job again; a worker continues it from its last checkpoint."""
        with session(self.engine) as db:
            job = self._job(db, project, job_id)
            if job.status != "paused":
                raise RequestError(f"job {job_id} is {job.status}; only a paused job can be resumed",
                                   param="fine_tuning_job_id", code="invalid_state")
            job.status, job.requested = "queued", None
            add_event(db, job.id, "Job resumed; queued to continue from its last checkpoint")
            audit_job(db, job, "resumed", actor)
            resumed = job_object(job)
        self.on_queued()
        return resumed

    def _control(self, project: str, job_id: str, action: str, actor: str | None) -> dict[str, Any]:
        with session(self.engine) as db:
            job = self._job(db, project, job_id)
            allowed = ("validating_files", "queued", "running", "paused") if action == "cancel" else (
                "validating_files", "queued", "running")
            if job.status not in allowed:
                raise RequestError(f"job {job_id} is {job.status}; it cannot be {action}ed",
                                   param="fine_tuning_job_id", code="invalid_state")
            if job.status == "running":
                job.requested = action  # the worker running it stops it and sets the status
                add_event(db, job.id, f"{action.capitalize()} requested; the job stops after its current step")
                audit_job(db, job, f"{action}_requested", actor)
            else:
                job.status = "cancelled" if action == "cancel" else "paused"
                job.finished_at = utc_now() if action == "cancel" else None
                add_event(db, job.id, f"The job was {job.status}")
                audit_job(db, job, job.status, actor)
            return job_object(job)



def holdout_size(examples: int, evaluation: JobEval) -> int:
    """Examples held out of a training file for the evaluation after training: the fraction, 10 to 100 of
    them, and none when fewer than MIN_EXAMPLES would be left to train on."""
    size = min(MAX_HELD_OUT, max(MIN_HELD_OUT, round(examples * evaluation.holdout_fraction)))
    return size if examples - size >= MIN_EXAMPLES and examples >= 4 * MIN_HELD_OUT else 0


def split_off(source: Path, train: Path, held_out: Path, size: int, seed: int) -> None:
    """Write `size` of the file's examples, drawn with `seed`, to `held_out` and the rest to `train`, in order."""
    lines = [line for line in source.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    chosen = set(random.Random(seed).sample(range(len(lines)), size))
    train.parent.mkdir(parents=True, exist_ok=True)
    train.write_text("".join(line + "\n" for i, line in enumerate(lines) if i not in chosen))
    held_out.write_text("".join(line + "\n" for i, line in enumerate(lines) if i in chosen))


def _with_defaults(hone: dict, examples: int, hyper: dict) -> dict:
    """The job's hone settings over the job defaults: the last 3 checkpoints kept, as OpenAI keeps them, and
    about 10 checkpoints over the run, so a worker that dies loses at most a tenth of the work."""
    steps = math.ceil(hyper["n_epochs"] * math.ceil(examples / hyper["batch_size"]))
    training = {"save_total_limit": 3, "save_every": max(1, math.ceil(steps / CHECKPOINTS_PER_RUN)),
                **(hone.get("training") or {})}
    return {**hone, "training": training}
