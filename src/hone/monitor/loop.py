"""The retraining loop: a trigger in a model's traffic -> a curated dataset of its captured exchanges -> a fine-tuning
job with the champion's config -> the challenger evaluated against the champion -> a canary (or a promotion request).

Triggers (project settings `loop.triggers`) read the champion's traffic since their last firing. Each firing has a
cause key, and `loop_firings` holds each (project, model, trigger, cause) once, so no cause fires twice:

    drift          drift:{first request id of the drifted window}
    format_validity format:{first request id of the judged traffic}
    rating         rating:{first request id of the judged traffic}
    corrections    correction:{id of the N-th new correction}
    schedule       schedule:{period index since the epoch}

A queued, running or evaluating retrain of the model blocks the next firing: it is recorded once as `skipped`
(with the reason) and fires when the block is gone. Everything runs in `run_periodic`, which every `hone worker`
calls; a lease in `periodic_leases` lets one worker at a time run the checks.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError

from hone import audit
from hone.errors import HoneError, NotFoundError
from hone.home import hone_home
from hone.jobs.service import ACTIVE
from hone.monitor.capture import prompt_messages
from hone.monitor.loop_settings import LoopSettings
from hone.store import engine_for, session
from hone.store.tables import (
    AliasSplit,
    CapturedRequest,
    Feedback,
    FineTuningJob,
    LoopFiring,
    ModelAlias,
    ModelVersion,
    PeriodicLease,
    Project,
    iso_utc,
    utc_now,
)

log = logging.getLogger("hone.loop")
LEASE_NAME = "loop"
LEASE_S = 900.0  # a worker that died holding the checks frees them after this long (renewed between steps)
LOOP_JOB_TAG = "hone_loop_firing"  # the job's metadata key naming the firing that created it
BLOCKING = ("preparing", "training", "trained", "evaluating")  # a firing in these states blocks the next
RECENT_FIRINGS = 10


# ---- what the loop reports ----

class Firing(BaseModel):
    """One firing of a trigger: why (the figure against its threshold), and how far it got.

    status: skipped (a retrain was in progress; fires once it is not), too_few (fewer curated examples than
    min_examples), failed (no dataset or job could be made), training, retrain_failed, trained (evaluation
    pending), evaluating, eval_failed, rejected (did not beat the champion), canary (its checks decide the
    promotion), canary_refused."""

    id: str
    project: str
    model: str
    trigger: str
    cause: str
    status: str
    reason: str
    figure: float | None = None
    threshold: float | None = None
    job_id: str | None = None
    dataset_id: str | None = None
    challenger: str | None = None
    verdicts: dict[str, str] = {}
    error: str | None = None
    created_at: str
    updated_at: str


class RetrainJob(BaseModel):
    """A fine-tuning job of the model, with its error when it failed (the champion keeps serving)."""

    id: str
    status: str
    error: str | None = None


class ActiveCanary(BaseModel):
    id: str
    alias: str
    mode: str
    weight: float
    champion_version: str
    challenger_version: str


class ModelLoop(BaseModel):
    """The loop as it stands for one model."""

    model: str
    champion: str | None = None
    running_retrain: RetrainJob | None = None
    last_failed_retrain: RetrainJob | None = None
    pending_evaluations: list[Firing] = []
    active_canary: ActiveCanary | None = None
    firings: list[Firing] = []


class LoopStatus(BaseModel):
    object: str = "loop.status"
    project: str
    enabled: bool
    models: list[ModelLoop]


class PeriodicRun(BaseModel):
    """What one run of the periodic checks did (ran: False when another worker holds them, or they were not due)."""

    ran: bool
    holder: str | None = None
    reason: str = ""
    firings: list[Firing] = []
    evaluated: list[Firing] = []
    canary_checks: int = 0
    errors: list[str] = []


def _naive(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _firing(row: LoopFiring) -> Firing:
    details = json.loads(row.details_json or "{}")
    return Firing(id=row.id, project=row.project, model=row.model, trigger=row.trigger, cause=row.cause,
                  status=row.status, reason=details.get("reason", ""), figure=details.get("figure"),
                  threshold=details.get("threshold"), job_id=row.job_id, dataset_id=row.dataset_id,
                  challenger=details.get("challenger"), verdicts=details.get("verdicts") or {},
                  error=details.get("error"), created_at=iso_utc(row.created_at),
                  updated_at=iso_utc(row.updated_at))


def _set(row: LoopFiring, status: str, **details: Any) -> None:
    row.status, row.updated_at = status, utc_now()
    row.details_json = json.dumps(json.loads(row.details_json or "{}") | details)


def _audit(db, row: LoopFiring, action: str, actor: str, **details: Any) -> None:
    audit.record(db, project=row.project, actor=actor, action=f"loop.{action}", object_type="loop.firing",
                 object_id=row.id, details={"model": row.model, "trigger": row.trigger, "cause": row.cause} | details)


# ---- the champion and its traffic ----

@dataclass(frozen=True)
class Champion:
    """The version the champion alias points to, and the job that trained it (its config and eval set)."""

    version: ModelVersion
    job: FineTuningJob | None

    @property
    def eval_set(self) -> Path | None:
        """The model's fixed eval set: the champion job's held-out split (or its validation file)."""
        if self.job is None:
            return None
        from hone.jobs.service import JOB_SETTINGS, job_dir

        folder = job_dir(self.job.id)
        settings = folder / JOB_SETTINGS
        test_file = json.loads(settings.read_text()).get("test_file") if settings.is_file() else None
        for name in (test_file, "heldout.jsonl", "valid.jsonl"):
            if name and (folder / name).is_file():
                return folder / name
        return None


def _champion(db, project: str, model: str, alias: str) -> Champion | None:
    name = db.scalar(select(ModelAlias.version_name).where(ModelAlias.project == project, ModelAlias.model == model,
                                                           ModelAlias.alias == alias))
    version = db.scalar(select(ModelVersion).where(ModelVersion.name == name)) if name else None
    if version is None:
        return None
    job = db.get(FineTuningJob, version.job_id) if version.job_id else None
    return Champion(version, job)


def _traffic(project: str, model: str):
    """Captured requests of `model` (named MODEL, MODEL@ALIAS, or one of its versions), shadow copies left out."""
    versions = select(ModelVersion.name).where(ModelVersion.project == project, ModelVersion.model == model)
    return (CapturedRequest.project == project) & or_(CapturedRequest.arm.is_(None), CapturedRequest.arm != "shadow") \
        & or_(CapturedRequest.served_version.in_(versions), CapturedRequest.model == model,
              CapturedRequest.model.startswith(f"{model}@", autoescape=True))


# ---- triggers ----

@dataclass(frozen=True)
class Observation:
    """A trigger that holds now: its cause key, the figure against its threshold, and how far it read."""

    trigger: str
    cause: str
    figure: float | None
    threshold: float | None
    reason: str
    through: dict[str, int] = field(default_factory=dict)


def _since(db, project: str, model: str, trigger: str) -> dict[str, int]:
    """How far the trigger's last firing (skips do not count) read: {"request": id, "feedback": id}."""
    row = db.scalar(select(LoopFiring).where(LoopFiring.project == project, LoopFiring.model == model,
                                             LoopFiring.trigger == trigger, LoopFiring.status != "skipped")
                    .order_by(LoopFiring.created_at.desc()).limit(1))
    return json.loads(row.details_json).get("through", {}) if row else {}


def _observe(db, settings: LoopSettings, contracts: dict, project: str, model: str, champion: Champion,
             now: datetime) -> list[Observation]:
    """Every configured trigger that holds for the model now."""
    triggers = settings.triggers
    found = []
    champion_traffic = (CapturedRequest.project == project) & (CapturedRequest.served_version == champion.version.name)
    if triggers.corrections:
        since = _since(db, project, model, "corrections").get("feedback", 0)
        ids = db.scalars(select(Feedback.id).join(CapturedRequest, CapturedRequest.response_id == Feedback.response_id)
                         .where(_traffic(project, model), Feedback.correction.is_not(None), Feedback.id > since)
                         .order_by(Feedback.id)).all()
        if len(ids) >= triggers.corrections:
            nth = ids[triggers.corrections - 1]
            last_request = db.scalar(select(func.max(CapturedRequest.id)).where(_traffic(project, model)))
            found.append(Observation("corrections", f"correction:{nth}", len(ids), triggers.corrections,
                                     f"{len(ids)} new corrected answers (trigger: {triggers.corrections})",
                                     {"feedback": ids[-1], "request": last_request or 0}))
    if triggers.rating_below is not None:
        since = _since(db, project, model, "rating").get("request", 0)
        latest = (select(Feedback.response_id, func.max(Feedback.id).label("fid")).where(Feedback.rating.is_not(None))
                  .group_by(Feedback.response_id).subquery())
        rows = db.execute(select(CapturedRequest.id, Feedback.rating)
                          .join(latest, latest.c.response_id == CapturedRequest.response_id)
                          .join(Feedback, Feedback.id == latest.c.fid)
                          .where(champion_traffic, CapturedRequest.id > since).order_by(CapturedRequest.id)).all()
        if len(rows) >= triggers.min_requests:
            mean = sum(r.rating for r in rows) / len(rows)
            if mean < triggers.rating_below:
                found.append(Observation("rating", f"rating:{rows[0].id}", round(mean, 4), triggers.rating_below,
                                         f"mean rating {mean:.2f} of {len(rows)} rated replies is below "
                                         f"{triggers.rating_below}", {"request": rows[-1].id}))
    contract = contracts.get(model)
    if triggers.format_validity_below is not None and contract is not None and contract.defined:
        from hone.monitor.contracts import format_valid

        since = _since(db, project, model, "format_validity").get("request", 0)
        rows = db.execute(select(CapturedRequest.id, CapturedRequest.response_text)
                          .where(champion_traffic, CapturedRequest.id > since).order_by(CapturedRequest.id)).all()
        if len(rows) >= triggers.min_requests:
            share = sum(bool(format_valid(r.response_text, contract)) for r in rows) / len(rows)
            if share < triggers.format_validity_below:
                found.append(Observation("format_validity", f"format:{rows[0].id}", round(share, 4),
                                         triggers.format_validity_below,
                                         f"{share:.1%} of {len(rows)} replies keep the output contract (trigger: "
                                         f"below {triggers.format_validity_below:.0%})", {"request": rows[-1].id}))
    if triggers.drift:
        drifted = _drift(db, project, model, champion)
        if drifted is not None:
            found.append(drifted)
    if triggers.schedule_hours is not None:
        period = int(now.timestamp() // (triggers.schedule_hours * 3600))
        last_request = db.scalar(select(func.max(CapturedRequest.id)).where(_traffic(project, model)))
        found.append(Observation("schedule", f"schedule:{period}", None, triggers.schedule_hours,
                                 f"scheduled retrain (every {triggers.schedule_hours:g} h, period {period})",
                                 {"request": last_request or 0}))
    return found


# The newest drift window judged per (project, model) in this process: a window is embedded once, not every minute.
_JUDGED_WINDOWS: dict[tuple[str, str], str] = {}


def _drift(db, project: str, model: str, champion: Champion) -> Observation | None:
    """Prompt drift of the newest complete window of the champion's traffic since the last drift firing, against
    the champion's training prompts: the same reference (sampled, embedded once per process) and prompt text the
    monitor's `hone monitor drift` uses, with hone.monitor.drift's calibrated defaults."""
    from hone.monitor.drift import DEFAULT_CONFIG, embed_prompts, prompt_drift
    from hone.monitor.traffic_drift import request_prompt, training_reference

    since = _since(db, project, model, "drift").get("request", 0)
    rows = db.execute(select(CapturedRequest.id, CapturedRequest.request_json)
                      .where(CapturedRequest.project == project,
                             CapturedRequest.served_version == champion.version.name, CapturedRequest.id > since)
                      .order_by(CapturedRequest.id)).all()
    size = DEFAULT_CONFIG.window_size
    if len(rows) < size or not champion.version.training_file_sha256:
        return None
    window = rows[(len(rows) // size - 1) * size:][:size]
    cause = f"drift:{window[0].id}"
    if _JUDGED_WINDOWS.get((project, model)) == cause:
        return None  # judged already (drifted or not): the embeddings are not computed again every minute
    _JUDGED_WINDOWS[(project, model)] = cause
    reference = training_reference(champion.version.name, champion.version.training_file_sha256,
                                   DEFAULT_CONFIG.reference_sample)
    if len(reference.replies) < DEFAULT_CONFIG.min_window:
        return None  # too little training data to compare with; `hone monitor drift` says so
    result = prompt_drift(reference.embeddings, embed_prompts([request_prompt(r.request_json) for r in window]))
    if result.status != "ok" or not result.drifted:
        return None
    auc = result.classifier.auc if result.classifier else None
    return Observation("drift", cause, round(auc, 4) if auc is not None else None,
                       round(result.classifier.threshold, 4) if result.classifier else None,
                       "prompt drift: " + "; ".join(result.reasons), {"request": window[-1].id})


def _blocker(db, project: str, model: str) -> str | None:
    """Why a new retrain of the model must wait (a job of it is active, or a loop retrain is not finished)."""
    job = db.scalar(select(FineTuningJob).where(FineTuningJob.project == project, FineTuningJob.suffix == model,
                                                FineTuningJob.status.in_(ACTIVE)).limit(1))
    if job is not None:
        return f"retrain job {job.id} of {model} is {job.status}"
    busy = db.scalar(select(LoopFiring).where(LoopFiring.project == project, LoopFiring.model == model,
                                              LoopFiring.status.in_(BLOCKING)).limit(1))
    if busy is not None:
        return f"the retrain of firing {busy.id} ({busy.trigger}) is {busy.status}"
    return None


def check_triggers(project: str, model: str, *, db_url: str | None = None, actor: str,
                   now: datetime | None = None) -> list[Firing]:
    """Evaluate the model's triggers against its champion's traffic; each that holds for a new cause fires once:
    a dataset and a fine-tuning job (or a firing that says why not). Returns the firings changed by this call."""
    from hone.registry.projects import Projects

    now = now or utc_now()
    project_settings = Projects(db_url).settings(project)
    settings = project_settings.loop
    engine = engine_for(db_url)
    changed = []
    with session(engine) as db:
        champion = _champion(db, project, model, settings.champion_alias)
        if champion is None:
            return []
        observations = _observe(db, settings, project_settings.monitor.contracts, project, model, champion, now)
    for seen in observations:
        with session(engine) as db:
            row = db.scalar(select(LoopFiring).where(LoopFiring.project == project, LoopFiring.model == model,
                                                     LoopFiring.trigger == seen.trigger,
                                                     LoopFiring.cause == seen.cause))
            if row is not None and row.status != "skipped":
                continue
            blocker = _blocker(db, project, model)
            details = {"reason": seen.reason, "figure": seen.figure, "threshold": seen.threshold,
                       "through": seen.through}
            if blocker is not None:
                if row is None:
                    row = LoopFiring(id=f"loopfire-{secrets.token_hex(8)}", project=project, model=model,
                                     trigger=seen.trigger, cause=seen.cause, status="skipped",
                                     details_json=json.dumps(details | {"skipped": blocker}), created_at=now,
                                     updated_at=now)
                    db.add(row)
                    _audit(db, row, "skipped", actor, reason=blocker, figure=seen.figure, threshold=seen.threshold)
                    changed.append(_firing(row))
                continue
        fired = _claim_cause(engine, project, model, seen, details, now)
        if fired is not None:
            changed.append(_fire(engine, db_url, settings, fired, champion, actor))
    return changed


def _claim_cause(engine, project: str, model: str, seen: Observation, details: dict, now: datetime) -> str | None:
    """Take the cause for this process: insert its firing, or turn its `skipped` firing into one; None when it is
    another's already (the unique cause and the conditional UPDATE see to it)."""
    try:
        with session(engine) as db:
            moved = db.execute(update(LoopFiring).where(
                LoopFiring.project == project, LoopFiring.model == model, LoopFiring.trigger == seen.trigger,
                LoopFiring.cause == seen.cause, LoopFiring.status == "skipped")
                .values(status="preparing", details_json=json.dumps(details), updated_at=now))
            if moved.rowcount == 1:
                return db.scalar(select(LoopFiring.id).where(LoopFiring.project == project,
                                                             LoopFiring.model == model,
                                                             LoopFiring.trigger == seen.trigger,
                                                             LoopFiring.cause == seen.cause))
            firing_id = f"loopfire-{secrets.token_hex(8)}"
            db.add(LoopFiring(id=firing_id, project=project, model=model, trigger=seen.trigger, cause=seen.cause,
                              status="preparing", details_json=json.dumps(details), created_at=now, updated_at=now))
            db.flush()
            return firing_id
    except IntegrityError:
        return None


def _fire(engine, db_url: str | None, settings: LoopSettings, firing_id: str, champion: Champion,
          actor: str) -> Firing:
    """Build the firing's dataset and job; the firing ends `training`, `too_few` or `failed`, audited either way."""
    try:
        outcome = _retrain(db_url, settings, firing_id, champion, actor)
    except Exception as error:  # a broken dataset or job is the firing's outcome, not the loop's crash
        log.warning("loop firing %s could not start its retrain", firing_id, exc_info=True)
        outcome = {"status": "failed", "error": getattr(error, "message", None) or str(error)}
    with session(engine) as db:
        row = db.get(LoopFiring, firing_id)
        status = outcome.pop("status")
        row.job_id, row.dataset_id = outcome.pop("job_id", None), outcome.pop("dataset_id", None)
        _set(row, status, **outcome)
        details = json.loads(row.details_json)
        action = {"training": "fired", "too_few": "too_few", "failed": "failed"}[status]
        _audit(db, row, action, actor, figure=details.get("figure"), threshold=details.get("threshold"),
               reason=details.get("reason"), job_id=row.job_id, dataset_id=row.dataset_id,
               examples=details.get("examples"), error=details.get("error"))
        return _firing(row)


def export_exchanges(db_url: str | None, project: str, model: str, path: Path) -> list[bool]:
    """Write the model's captured exchanges as chat JSONL (a correction, where given, is the answer); returns
    for each written line whether its answer is a correction."""
    latest = (select(Feedback.response_id, func.max(Feedback.id).label("fid")).where(Feedback.correction.is_not(None))
              .group_by(Feedback.response_id).subquery())
    corrected = []
    path.parent.mkdir(parents=True, exist_ok=True)
    with session(engine_for(db_url)) as db, path.open("w", encoding="utf-8") as out:
        query = (select(CapturedRequest.request_json, CapturedRequest.response_text, Feedback.correction)
                 .outerjoin(latest, latest.c.response_id == CapturedRequest.response_id)
                 .outerjoin(Feedback, Feedback.id == latest.c.fid)
                 .where(_traffic(project, model)).order_by(CapturedRequest.id))
        for request_json, reply, correction in db.execute(query):
            prompt = prompt_messages(json.loads(request_json))
            answer = correction if correction is not None else reply
            if not prompt or not answer.strip():
                continue
            out.write(json.dumps({"messages": prompt + [{"role": "assistant", "content": answer}]},
                                 ensure_ascii=False) + "\n")
            corrected.append(correction is not None)
    return corrected


def _retrain(db_url: str | None, settings: LoopSettings, firing_id: str, champion: Champion,
             actor: str) -> dict[str, Any]:
    """The dataset (export -> prepare: PII, dedup, decontamination against the eval set, replay) and the job."""
    from hone.data.curate.pii import PiiSettings
    from hone.data.curate.prepare import DecontaminateSettings, InputSpec, PrepareConfig, SplitSettings, prepare
    from hone.data.curate.replay import ReplaySettings
    from hone.jobs.files import FileStore
    from hone.jobs.service import JobService
    from hone.jobs.spec import JobRequest

    version, job = champion.version, champion.job
    if job is None:
        return {"status": "failed", "error": f"the champion {version.name} was not trained by a job: there is no "
                "config to retrain with"}
    folder = hone_home() / "loop" / version.project / version.model / firing_id
    exported = folder / "captured.jsonl"
    corrected = export_exchanges(db_url, version.project, version.model, exported)
    (folder / "corrected.json").write_text(json.dumps(corrected))
    if len(corrected) < settings.min_examples:
        return {"status": "too_few", "examples": len(corrected),
                "error": f"{len(corrected)} captured exchange(s) of {version.model}; a retrain needs at least "
                f"{settings.min_examples} (loop.min_examples)"}
    hone = json.loads(job.hone_json)
    replay = hone.get("replay", {})
    eval_set = champion.eval_set
    fraction = settings.eval.traffic_fraction
    config = PrepareConfig(
        inputs=[InputSpec(path=exported)], out=folder / "dataset", model=job.base_model, pii=PiiSettings(),
        decontaminate=DecontaminateSettings(against=[eval_set] if eval_set else []),
        split=SplitSettings(train=1 - fraction, val=0, test=fraction, seed=job.seed),
        # the champion's replay, mixed here once; the job is told not to mix it again
        replay=ReplaySettings(**{k: v for k, v in (replay or {}).items() if k in ReplaySettings.model_fields})
        if replay is not None and (replay or {}).get("fraction", 0.1) > 0 else None)
    manifest = prepare(config)
    added = sum(s["counts"].get("added", 0) for s in manifest["steps"] if s["name"] == "replay")
    curated = manifest["counts"]["train"] - added
    base = {"dataset_id": manifest["dataset_id"], "dataset": str(config.out), "examples": curated,
            "eval_set": str(eval_set) if eval_set else None}
    if curated < settings.min_examples:
        return base | {"status": "too_few", "error": f"{curated} training example(s) left after curation; a "
                       f"retrain needs at least {settings.min_examples} (loop.min_examples)"}
    training = folder / "train.jsonl"
    lines = (config.out / "train.jsonl").read_text(encoding="utf-8").splitlines()
    training.write_text("".join(json.dumps({"messages": json.loads(line)["messages"]}, ensure_ascii=False) + "\n"
                                for line in lines if line.strip()), encoding="utf-8")
    with training.open("rb") as handle:
        stored = FileStore(db_url).upload(version.project, handle, f"loop-{version.model}-{firing_id}.jsonl",
                                          "fine-tune", actor=actor)
    method = json.loads(job.method_json)
    request = JobRequest(model=job.model, training_file=stored.id, suffix=version.model, seed=job.seed,
                         metadata={LOOP_JOB_TAG: firing_id, "retrains": version.name},
                         method=method, hone=hone | {"replay": None})
    created = JobService(db_url, bases={job.model: job.base_model}).create(version.project, request, actor=actor)
    if created["status"] == "failed":
        return base | {"status": "failed", "job_id": created["id"], "file_id": stored.id,
                       "error": (created.get("error") or {}).get("message")}
    return base | {"status": "training", "job_id": created["id"], "file_id": stored.id}


# ---- challenger vs champion ----

def follow_retrains(project: str, *, db_url: str | None = None, actor: str) -> list[Firing]:
    """Move `training` firings on with their job: `trained` (evaluation pending) or `retrain_failed` (its error);
    a firing left `preparing` by a worker that died while building its dataset ends `failed`."""
    changed = []
    with session(engine_for(db_url)) as db:
        abandoned = db.scalars(select(LoopFiring).where(
            LoopFiring.project == project, LoopFiring.status == "preparing",
            LoopFiring.updated_at < utc_now() - timedelta(seconds=LEASE_S))).all()
        for row in abandoned:
            error = "the checks stopped while building the retrain's dataset; the next cause fires again"
            _set(row, "failed", error=error)
            _audit(db, row, "failed", actor, error=error)
            changed.append(_firing(row))
        for row in db.scalars(select(LoopFiring).where(LoopFiring.project == project,
                                                       LoopFiring.status == "training")):
            job = db.get(FineTuningJob, row.job_id)
            if job is None or job.status in ACTIVE:
                continue
            if job.status == "succeeded":
                _set(row, "trained", challenger=job.fine_tuned_model)
                _audit(db, row, "trained", actor, job_id=job.id, challenger=job.fine_tuned_model)
            else:
                error = json.loads(job.error_json).get("message") if job.error_json else f"the job was {job.status}"
                _set(row, "retrain_failed", error=error)
                _audit(db, row, "retrain_failed", actor, job_id=job.id, error=error)
            changed.append(_firing(row))
    return changed


def evaluate_challengers(project: str, *, db_url: str | None = None, actor: str,
                         now: datetime | None = None) -> list[Firing]:
    """Evaluate each trained challenger against the champion (the fixed eval set, then the fresh traffic slice),
    and start a canary (or ask for a promotion) when every verdict says SHIP. An evaluation that fails or runs past
    loop.eval.timeout_s ends `eval_failed`: no promotion."""
    from hone.registry.projects import Projects

    now = now or utc_now()
    settings = Projects(db_url).settings(project).loop
    engine = engine_for(db_url)
    changed = []
    with session(engine) as db:
        stale = db.scalars(select(LoopFiring).where(
            LoopFiring.project == project, LoopFiring.status == "evaluating",
            LoopFiring.updated_at < now - timedelta(seconds=settings.eval.timeout_s))).all()
        for row in stale:
            error = f"the evaluation did not finish within {settings.eval.timeout_s:g} s: no promotion"
            _set(row, "eval_failed", error=error)
            _audit(db, row, "eval_failed", actor, error=error)
            changed.append(_firing(row))
        pending = db.scalars(select(LoopFiring.id).where(LoopFiring.project == project,
                                                         LoopFiring.status == "trained")).all()
    for firing_id in pending:
        with session(engine) as db:
            claimed = db.execute(update(LoopFiring).where(LoopFiring.id == firing_id, LoopFiring.status == "trained")
                                 .values(status="evaluating", updated_at=now))
            if claimed.rowcount != 1:
                continue
        changed.append(_evaluate(engine, db_url, settings, firing_id, actor))
    return changed


def _evaluate(engine, db_url: str | None, settings: LoopSettings, firing_id: str, actor: str) -> Firing:
    with session(engine) as db:
        row = db.get(LoopFiring, firing_id)
        details = json.loads(row.details_json)
        project, model = row.project, row.model
        champion = _champion(db, project, model, settings.champion_alias)
    try:
        verdicts, notes = _verdicts(db_url, settings, project, model, details, champion, firing_id, actor)
    except Exception as error:  # the challenger is not promoted; the status says why
        log.warning("loop firing %s: the evaluation failed", firing_id, exc_info=True)
        with session(engine) as db:
            row = db.get(LoopFiring, firing_id)
            message = getattr(error, "message", None) or str(error)
            _set(row, "eval_failed", error=message)
            _audit(db, row, "eval_failed", actor, error=message)
            return _firing(row)
    ship = bool(verdicts) and all(v == "SHIP" for v in verdicts.values())
    outcome: dict[str, Any] = {"verdicts": verdicts, "eval_notes": notes}
    status = "rejected"
    if ship:
        status, extra = _roll_out(db_url, settings, project, model, details["challenger"], actor)
        outcome |= extra
    with session(engine) as db:
        row = db.get(LoopFiring, firing_id)
        _set(row, status, **outcome)
        _audit(db, row, "evaluated", actor, challenger=details["challenger"], verdicts=verdicts, outcome=status,
               notes=notes)
        return _firing(row)


def _verdicts(db_url: str | None, settings: LoopSettings, project: str, model: str, details: dict,
              champion: Champion | None, firing_id: str, actor: str) -> tuple[dict[str, str], list[str]]:
    """SHIP/... per test set: the fixed eval set and the traffic slice with corrections as references; the slice
    without corrections is judged pairwise when a judge is configured, else skipped (said in the notes)."""
    from hone.registry.evaluate import evaluate_against

    if champion is None:
        raise HoneError(f"{model}@{settings.champion_alias} points nowhere: no champion to compare with")
    challenger = details["challenger"]
    out = Path(details["dataset"]).parent / "eval"
    verdicts, notes = {}, []
    references, unreferenced = _traffic_slice(Path(details["dataset"]), out)
    common = {"db_url": db_url, "max_examples": settings.eval.max_examples, "probe_limit": settings.eval.probe_limit,
              "actor": actor}
    if references is not None:
        verdicts["traffic"] = evaluate_against(project, model, challenger, settings.champion_alias, data=references,
                                               out=out / "traffic", **common)["verdict"]
    else:
        notes.append("no corrected exchange in the held-out traffic slice")
    if unreferenced is not None and settings.eval.judge is not None:
        verdicts["traffic_judged"] = _judged(project, model, challenger, champion, settings, unreferenced,
                                             out / "judged", db_url, actor)
    elif unreferenced is not None:
        notes.append("traffic without corrections not evaluated: no judge in loop.eval.judge")
    eval_set = champion.eval_set if details.get("eval_set") is None else Path(details["eval_set"])
    if eval_set is not None and eval_set.is_file():
        # last, so the evaluation the promotion policy reads is the one on the fixed eval set
        verdicts["eval_set"] = evaluate_against(project, model, challenger, settings.champion_alias, data=eval_set,
                                                out=out / "eval_set", **common)["verdict"]
    else:
        notes.append("the champion's job kept no held-out eval set")
    if not verdicts:
        raise HoneError("nothing to evaluate the challenger on: " + "; ".join(notes))
    return verdicts, notes


def _traffic_slice(dataset: Path, out: Path) -> tuple[Path | None, Path | None]:
    """The dataset's test split (captured exchanges the retrain did not see), as two files: those whose answer is a
    correction (a reference) and the others (None where empty)."""
    corrected = json.loads((dataset.parent / "corrected.json").read_text())
    with_reference, without = [], []
    test = dataset / "test.jsonl"
    for line in test.read_text(encoding="utf-8").splitlines() if test.is_file() else []:
        record = json.loads(line)
        source_line = (record.get("metadata") or {}).get("line")
        target = with_reference if source_line and corrected[source_line - 1] else without
        target.append(json.dumps({"messages": record["messages"]}, ensure_ascii=False) + "\n")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, lines in (("traffic_references.jsonl", with_reference), ("traffic_unreferenced.jsonl", without)):
        if lines:
            (out / name).write_text("".join(lines), encoding="utf-8")
        paths.append(out / name if lines else None)
    return paths[0], paths[1]


def _judged(project: str, model: str, challenger: str, champion: Champion, settings: LoopSettings, data: Path,
            out: Path, db_url: str | None, actor: str) -> str:
    """Challenger against champion on traffic without references, by the configured pairwise judge (both orders)."""
    from hone.eval.config import CandidateConfig, EvalConfig
    from hone.eval.judge import JudgeConfig
    from hone.eval.run import evaluate
    from hone.registry.promotion import record_evaluation

    judge = settings.eval.judge
    with session(engine_for(db_url)) as db:
        candidate = db.scalar(select(ModelVersion).where(ModelVersion.name == challenger))
        run_dirs = [("champion", Path(champion.version.run_dir)), ("challenger", Path(candidate.run_dir))]
    config = EvalConfig(data=data, out=out, limit=settings.eval.max_examples,
                        candidates=[CandidateConfig(name=n, adapter=d) for n, d in run_dirs],
                        judge=JudgeConfig(url=judge.url, model=judge.model, api_key_env=judge.api_key_env,
                                          rubric=False, pairwise=True),
                        forgetting={"enabled": False}, verdict={"baseline": "champion", "candidate": "challenger"})
    report = evaluate(config)
    decision, reasons = pairwise_verdict(((report.get("judge") or {}).get("pairwise") or {}).get("challenger"))
    with session(engine_for(db_url)) as db:
        record_evaluation(db, project=project, version_name=challenger, against=champion.version.name,
                          summary={"verdict": decision, "reasons": reasons, "test_set": "traffic_judged",
                                   "report_json": report["paths"]["json"]}, actor=actor)
    return decision


def pairwise_verdict(pairwise: dict | None, alpha: float = 0.05) -> tuple[str, list[str]]:
    """The verdict of a pairwise judge (both orders; a verdict that flips with the order is a tie): SHIP when the
    challenger wins significantly more often than it loses (two-sided sign test over wins and losses, ties left
    out), REGRESSION when it loses significantly more often, else NOT WORTH IT; INCOMPLETE without judgements.
    The replies captured from the champion are not references, so no metric against them is used."""
    from scipy.stats import binomtest

    if not pairwise or not (pairwise.get("wins", 0) + pairwise.get("losses", 0)):
        return "INCOMPLETE", ["the judge gave no win or loss (it failed, or every pair was a tie)"]
    wins, losses, ties = pairwise["wins"], pairwise["losses"], pairwise.get("ties", 0)
    p_value = binomtest(wins, wins + losses, 0.5).pvalue
    figures = f"{wins} wins, {losses} losses, {ties} ties against the champion (sign test p={p_value:.3g})"
    if p_value < alpha:
        return ("SHIP", [f"the judge preferred the challenger: {figures}"]) if wins > losses else \
            ("REGRESSION", [f"the judge preferred the champion: {figures}"])
    return "NOT WORTH IT", [f"no significant preference: {figures}"]


def _roll_out(db_url: str | None, settings: LoopSettings, project: str, model: str, challenger: str,
              actor: str) -> tuple[str, dict[str, Any]]:
    """A challenger that beat the champion: a canary (or shadow) split on the champion alias; the canary's checks
    then roll it back or offer it for promotion (the project's policy and approvers decide)."""
    from hone.monitor.canary import Canaries

    try:
        split = Canaries(db_url).start(project, model, settings.champion_alias, challenger,
                                       mode=settings.canary.mode, weight=settings.canary.weight, actor=actor,
                                       reason="the retraining loop's challenger beat the champion")
    except HoneError as error:  # e.g. another split is active on the alias
        return "canary_refused", {"error": error.message}
    return "canary", {"canary": split.id}


# ---- status ----

def _models(db, project: str, settings: LoopSettings) -> list[str]:
    if settings.model != "all":
        return list(settings.model)
    names = db.scalars(select(ModelAlias.model).where(ModelAlias.project == project,
                                                      ModelAlias.alias == settings.champion_alias)).all()
    fired = db.scalars(select(LoopFiring.model).where(LoopFiring.project == project)).all()
    return sorted({*names, *fired})


def _job(job: FineTuningJob | None) -> RetrainJob | None:
    if job is None:
        return None
    error = json.loads(job.error_json).get("message") if job.error_json else None
    return RetrainJob(id=job.id, status=job.status, error=error)


def loop_status(project: str, *, db_url: str | None = None, model: str | None = None) -> LoopStatus:
    """Per model: its champion, the running retrain, the last failed one with its error (the champion keeps
    serving), evaluations pending, the active canary, and the latest firings."""
    from hone.registry.projects import Projects

    settings = Projects(db_url).settings(project).loop
    shown = []
    with session(engine_for(db_url)) as db:
        if model and db.scalar(select(ModelVersion.id).where(ModelVersion.project == project,
                                                             ModelVersion.model == model).limit(1)) is None:
            raise NotFoundError(f"model {model!r} does not exist or you do not have access to it", param="model",
                                code="model_not_found")
        for name in [model] if model else _models(db, project, settings):
            champion = _champion(db, project, name, settings.champion_alias)
            jobs = select(FineTuningJob).where(FineTuningJob.project == project, FineTuningJob.suffix == name) \
                .order_by(FineTuningJob.created_at.desc()).limit(1)
            firings = [_firing(r) for r in db.scalars(
                select(LoopFiring).where(LoopFiring.project == project, LoopFiring.model == name)
                .order_by(LoopFiring.created_at.desc()).limit(RECENT_FIRINGS))]
            split = db.scalar(select(AliasSplit).where(AliasSplit.project == project, AliasSplit.model == name,
                                                       AliasSplit.status == "active").limit(1))
            shown.append(ModelLoop(
                model=name, champion=champion.version.name if champion else None,
                running_retrain=_job(db.scalar(jobs.where(FineTuningJob.status.in_(ACTIVE)))),
                last_failed_retrain=_job(db.scalar(jobs.where(FineTuningJob.status == "failed"))),
                pending_evaluations=[f for f in firings if f.status in ("trained", "evaluating")],
                active_canary=ActiveCanary(id=split.id, alias=split.alias, mode=split.mode, weight=split.weight,
                                           champion_version=split.champion_version,
                                           challenger_version=split.challenger_version) if split else None,
                firings=firings))
    return LoopStatus(project=project, enabled=settings.enabled, models=shown)


# ---- the periodic runner ----

def _take_lease(engine, holder: str, now: datetime, interval_s: float, force: bool) -> str | None:
    """Hold the loop's lease (one conditional UPDATE, like a job claim); None when taken, else why not."""
    try:
        with session(engine) as db:
            if db.get(PeriodicLease, LEASE_NAME) is None:
                db.add(PeriodicLease(name=LEASE_NAME))
    except IntegrityError:
        pass  # another worker made the row first
    free = or_(PeriodicLease.expires_at.is_(None), PeriodicLease.expires_at < now)
    due = free if force else free & or_(PeriodicLease.last_run_at.is_(None),
                                        PeriodicLease.last_run_at <= now - timedelta(seconds=interval_s))
    with session(engine) as db:
        taken = db.execute(update(PeriodicLease).where(PeriodicLease.name == LEASE_NAME, due)
                           .values(holder=holder, expires_at=now + timedelta(seconds=LEASE_S)))
        if taken.rowcount == 1:
            return None
        lease = db.get(PeriodicLease, LEASE_NAME)
        if lease.expires_at is not None and _naive(lease.expires_at) >= now:
            return f"{lease.holder} is running the checks"
        return "not due yet"


def _renew_lease(engine, holder: str) -> None:
    with session(engine) as db:
        db.execute(update(PeriodicLease).where(PeriodicLease.name == LEASE_NAME, PeriodicLease.holder == holder)
                   .values(expires_at=utc_now() + timedelta(seconds=LEASE_S)))


def _release_lease(engine, holder: str, now: datetime) -> None:
    with session(engine) as db:
        db.execute(update(PeriodicLease).where(PeriodicLease.name == LEASE_NAME, PeriodicLease.holder == holder)
                   .values(holder=None, expires_at=None, last_run_at=now))


def loop_projects(db_url: str | None = None) -> list[str]:
    """Projects whose settings turn the loop on."""
    from hone.registry.projects import Projects

    projects = Projects(db_url)
    with session(engine_for(db_url)) as db:
        names = db.scalars(select(Project.name).order_by(Project.name)).all()
    return [name for name in names if projects.settings(name).loop.enabled]


def run_periodic(db_url: str | None, worker_name: str, now: datetime | None = None, *, interval_s: float = 60.0,
                 force: bool = False, projects: list[str] | None = None) -> PeriodicRun:
    """Run the loop's due checks once, if no other worker is: triggers of every project with the loop on, the
    evaluation of finished retrains, and canary checks. `force` runs them even when not due (`hone loop check`);
    `projects` limits them to those. Errors are logged and returned, never raised."""
    now = now or utc_now()
    engine = engine_for(db_url)
    actor = f"loop {worker_name}"
    refused = _take_lease(engine, worker_name, now, interval_s, force)
    if refused is not None:
        return PeriodicRun(ran=False, reason=refused)
    run = PeriodicRun(ran=True, holder=worker_name)
    try:
        for project in loop_projects(db_url):
            if projects is not None and project not in projects:
                continue
            _step(run, f"{project}: retrains", lambda p=project: follow_retrains(p, db_url=db_url, actor=actor),
                  run.evaluated)
            _step(run, f"{project}: evaluations", lambda p=project: evaluate_challengers(p, db_url=db_url,
                                                                                        actor=actor, now=now),
                  run.evaluated)
            _renew_lease(engine, worker_name)
            from hone.registry.projects import Projects

            settings = Projects(db_url).settings(project).loop
            with session(engine) as db:
                models = _models(db, project, settings)
            for model in models:
                _step(run, f"{project}/{model}: triggers",
                      lambda p=project, m=model: check_triggers(p, m, db_url=db_url, actor=actor, now=now),
                      run.firings)
                _renew_lease(engine, worker_name)
        _canary_checks(run, db_url, actor, projects)
    finally:
        _release_lease(engine, worker_name, now)
    return run


def _step(run: PeriodicRun, name: str, action, into: list) -> None:
    try:
        into.extend(action())
    except Exception as error:  # one project's failure must not stop the others' checks
        log.exception("loop check %s failed", name)
        run.errors.append(f"{name}: {getattr(error, 'message', None) or error}")


def _canary_checks(run: PeriodicRun, db_url: str | None, actor: str, projects: list[str] | None) -> None:
    """Decide the active canary splits (hone.monitor.canary: roll back a worse challenger, offer a good one)."""
    from hone.monitor.canary import Canaries

    try:
        canaries = Canaries(db_url)
        for project in projects if projects is not None else [None]:
            run.canary_checks += len(canaries.check_all(actor=actor, project=project))
    except Exception as error:  # logged and reported; the next run tries again
        log.exception("canary checks failed")
        run.errors.append(f"canary checks: {error}")


class PeriodicChecks:
    """The loop's checks run from a worker's loop, in a thread of their own so job claiming never waits on them."""

    def __init__(self, db_url: str | None, worker_name: str, interval_s: float):
        self.db_url, self.worker_name, self.interval_s = db_url, worker_name, interval_s
        self._thread: threading.Thread | None = None
        self._last = float("-inf")

    def maybe_start(self, soon: bool = False) -> None:
        """Start a run when `interval_s` passed since the last start (or `soon`), unless one is still running."""
        if self._thread is not None and self._thread.is_alive():
            return
        if not soon and time.monotonic() - self._last < self.interval_s:
            return
        self._last = time.monotonic()
        self._thread = threading.Thread(target=self._run, args=(soon,), name="hone-loop", daemon=True)
        self._thread.start()

    def _run(self, force: bool) -> None:
        try:
            run = run_periodic(self.db_url, self.worker_name, interval_s=self.interval_s, force=force)
            for problem in run.errors:
                log.warning("loop: %s", problem)
        except Exception:  # the worker goes on; the next interval tries again
            log.exception("the loop's periodic checks failed")

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
