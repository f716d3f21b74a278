"""Workers: claim queued jobs, train each in a child process, report its progress, survive crashes.

Several workers (threads of `hone serve`, `hone worker` processes on other machines) share one database.
A claim is one conditional UPDATE, so two workers never take the same job (PostgreSQL also skips rows
another worker has locked). The worker holding a job renews its lease while the job trains; a job whose
lease ran out (its worker was killed or its machine lost) is claimed again and continues from its last
checkpoint with the same steps and data order.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy import and_, func, or_, select, true, update

from hone.errors import HoneError
from hone.home import hone_home
from hone.jobs.executors import Executor, LocalExecutor
from hone.jobs.files import FileStore
from hone.jobs.ids import new_id
from hone.jobs.service import add_event, audit_job, checkpoint_name, fail, job_dir, model_name
from hone.registry.card import write_version_cards
from hone.registry.versions import Registry
from hone.store import engine_for, session
from hone.store.tables import FineTuningJob, JobCheckpoint, JobEvent, StoredFile, utc_now

log = logging.getLogger("hone.jobs")
STOP_GRACE_S = 60.0  # how long a stopped training may take to write its checkpoint before it is killed
RETRY_START_S = 30.0  # how long a worker whose executor failed to start a job waits before claiming again
RESULT_COLUMNS = ["step", "epoch", "train_loss", "valid_loss", "learning_rate", "tokens", "tokens_per_s"]


@dataclass
class WorkerSettings:
    lease_s: float = 30.0  # a job whose worker was silent this long is taken over by another worker
    poll_s: float = 1.0  # how often a running job's progress is read and its lease renewed
    idle_poll_s: float = 1.0  # how often an idle worker looks for a queued job
    loop_interval_s: float = 60.0  # how often the retraining loop's checks run (one worker at a time does)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{new_id('', 6)}"


@dataclass
class MetricsTail:
    """New lines of a run's metrics.jsonl, each step once even when a resumed run writes it again."""

    path: Path
    posted: set[int] = field(default_factory=set)
    offset: int = 0

    def new_records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        size = self.path.stat().st_size
        if size < self.offset:  # a resumed run rewrote the file without the steps after its checkpoint
            self.offset = 0
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        records = []
        for line in complete.decode("utf-8", "replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("step") not in self.posted:
                self.posted.add(record["step"])
                records.append(record)
        return records


def metrics_event_data(record: dict) -> dict:
    """A metrics line of the run in OpenAI's metrics-event shape (plus hone's throughput figures)."""
    data = {"step": record["step"], "total_steps": record.get("total_steps"), "train_loss": record["train_loss"],
            "learning_rate": record.get("lr"), "epoch": record.get("epoch"), "tokens": record.get("tokens"),
            "tokens_per_s": record.get("tokens_per_s")}
    if "eval_loss" in record:
        data["valid_loss"] = record["eval_loss"]
    data.update({k: v for k, v in record.items() if k.startswith(("reward", "chosen", "rejected", "preference",
                                                                    "eval_"))})
    data.pop("eval_loss", None)
    return data


def metrics_message(data: dict) -> str:
    message = f"Step {data['step']}/{data.get('total_steps') or '?'}: training loss={data['train_loss']:.4f}"
    if "valid_loss" in data:
        message += f", validation loss={data['valid_loss']:.4f}"
    return message


def results_csv(metrics_path: Path) -> bytes:
    """The run's per-step figures as OpenAI's `fine-tune-results` CSV."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(RESULT_COLUMNS)
    lines = metrics_path.read_text().splitlines() if metrics_path.is_file() else []
    for line in lines:
        record = json.loads(line)
        writer.writerow([record.get("step"), record.get("epoch"), record.get("train_loss"),
                         record.get("eval_loss", ""), record.get("lr"), record.get("tokens"),
                         record.get("tokens_per_s")])
    return buffer.getvalue().encode()


class Worker:
    """Runs fine-tuning jobs from hone's database until told to stop."""

    def __init__(self, db_url: str | None = None, executor: Executor | None = None,
                 settings: WorkerSettings | None = None, name: str | None = None):
        self.db_url = db_url
        self.engine = engine_for(db_url)
        self.executor = executor or LocalExecutor()
        self.settings = settings or WorkerSettings()
        self.name = name or worker_name()
        self.stopping = threading.Event()
        self._nudged = threading.Event()
        self._periodic = None  # hone.monitor.loop.PeriodicChecks, made on the first run

    # ---- the loop ----

    def run(self, max_jobs: int | None = None) -> int:
        """Claim and run jobs until `stop()` (or `max_jobs` have run); returns how many ran."""
        done = 0
        while not self.stopping.is_set() and (max_jobs is None or done < max_jobs):
            self._periodic_checks()
            job_id = self.claim()
            if job_id is None:
                self._nudged.wait(self.settings.idle_poll_s)
                self._nudged.clear()
                continue
            try:
                self.run_job(job_id)
            except Exception:  # one job's failure must not stop the worker: it is failed and the loop goes on
                log.exception("job %s failed in the worker", job_id)
                self._fail_unexpectedly(job_id)
            done += 1
            self._periodic_checks(soon=True)  # a retrain of the loop that just ended is evaluated without waiting
        if self._periodic is not None:
            self._periodic.join(timeout=self.settings.loop_interval_s)
        return done

    def _periodic_checks(self, soon: bool = False) -> None:
        """Start the retraining loop's checks when due, in their own thread (claiming never waits on them)."""
        try:
            if self._periodic is None:
                from hone.monitor.loop import PeriodicChecks

                self._periodic = PeriodicChecks(self.db_url, self.name, self.settings.loop_interval_s)
            self._periodic.maybe_start(soon=soon)
        except Exception:  # the loop's trouble never stops the worker from training
            log.exception("the retraining loop's checks could not start")

    @property
    def actor(self) -> str:
        """Who the audit log names for this worker's changes."""
        return f"worker {self.name}"

    def stop(self) -> None:
        """Finish: a running job is stopped at its next step with a checkpoint and queued again for later."""
        self.stopping.set()
        self._nudged.set()

    def nudge(self) -> None:
        """A job was just queued: look now rather than at the next idle poll."""
        self._nudged.set()

    # ---- claiming ----

    def _claimable(self, now):
        return or_(FineTuningJob.status == "queued",
                   and_(FineTuningJob.status == "running", FineTuningJob.lease_expires_at < now))

    def claim(self, job_id: str | None = None) -> str | None:
        """Take the oldest queued job (or one whose worker's lease ran out), or only `job_id`; None when there is
        none."""
        now = utc_now()
        only = FineTuningJob.id == job_id if job_id else true()
        with session(self.engine) as db:
            candidates = db.scalars(select(FineTuningJob.id).where(self._claimable(now), only)
                                    .order_by(FineTuningJob.created_at).limit(8)
                                    .with_for_update(skip_locked=True)).all()
            for candidate in candidates:
                claimed = db.execute(update(FineTuningJob).where(FineTuningJob.id == candidate, self._claimable(now))
                                     .values(status="running", worker_id=self.name,
                                             lease_expires_at=now + timedelta(seconds=self.settings.lease_s),
                                             attempts=FineTuningJob.attempts + 1,
                                             started_at=func.coalesce(FineTuningJob.started_at, now)))
                if claimed.rowcount == 1:
                    job = db.get(FineTuningJob, candidate)
                    message = ("Fine-tuning job started" if job.attempts == 1 else
                               "Fine-tuning job continues from its last checkpoint")
                    add_event(db, candidate, message, data={"worker": self.name.split(":")[0]})
                    audit_job(db, job, "started" if job.attempts == 1 else "taken_over", self.actor,
                              attempt=job.attempts)
                    return candidate
        return None

    def _renew(self, job_id: str) -> FineTuningJob | None:
        """Extend the lease; the job as it now stands, or None when another worker has taken it over."""
        with session(self.engine) as db:
            renewed = db.execute(update(FineTuningJob)
                                 .where(FineTuningJob.id == job_id, FineTuningJob.worker_id == self.name,
                                        FineTuningJob.status == "running")
                                 .values(lease_expires_at=utc_now() + timedelta(seconds=self.settings.lease_s)))
            return db.get(FineTuningJob, job_id) if renewed.rowcount == 1 else None

    # ---- running one job ----

    def run_job(self, job_id: str) -> None:
        """Train a claimed job to its end, its cancel/pause, or the loss of its lease."""
        folder = job_dir(job_id)
        tail = MetricsTail(folder / "run" / "metrics.jsonl", self._posted_steps(job_id))
        try:
            training = self.executor.start(job_id, folder)
        except HoneError as error:  # e.g. the Ray cluster is down: the job waits for a worker that can run it
            self._requeue(job_id, f"The {self.executor.name} executor could not start the training: "
                          f"{error.message}; the job stays queued")
            self.stopping.wait(RETRY_START_S)
            return
        stop_sent_at: float | None = None
        requested = None
        while True:
            code = training.poll()
            self._report(job_id, tail)
            job = self._renew(job_id)
            if job is None:
                training.kill()  # another worker has the job now: this copy must not train on
                return
            if self.stopping.is_set() and requested is None:
                requested = "requeue"
            requested = job.requested or requested
            if code is not None:
                break
            if requested and stop_sent_at is None:
                training.stop()
                stop_sent_at = time.monotonic()
            if stop_sent_at is not None and time.monotonic() - stop_sent_at > STOP_GRACE_S:
                training.kill()
            time.sleep(self.settings.poll_s if requested is None else min(0.2, self.settings.poll_s))
        self._report(job_id, tail)
        self._finish(job_id, requested, code, folder)

    def _requeue(self, job_id: str, message: str) -> None:
        with session(self.engine) as db:
            job = db.get(FineTuningJob, job_id)
            if job.status == "running" and job.worker_id == self.name:
                job.status, job.worker_id, job.lease_expires_at = "queued", None, None
                add_event(db, job_id, message, level="warn")
                audit_job(db, job, "requeued", self.actor, reason=message)

    def _posted_steps(self, job_id: str) -> set[int]:
        with session(self.engine) as db:
            rows = db.scalars(select(JobEvent.data_json).where(JobEvent.job_id == job_id,
                                                               JobEvent.type == "metrics")).all()
        return {json.loads(row)["step"] for row in rows if row}

    def _report(self, job_id: str, tail: MetricsTail) -> None:
        """New metrics as events, the estimated finish, and the checkpoints now on disk."""
        records = tail.new_records()
        with session(self.engine) as db:
            job = db.get(FineTuningJob, job_id)
            for record in records:
                data = metrics_event_data(record)
                add_event(db, job_id, metrics_message(data), type="metrics", data=data)
            if records:
                job.estimated_finish = _estimated_finish(records[-1])
            self._sync_checkpoints(db, job)

    def _sync_checkpoints(self, db, job: FineTuningJob) -> None:
        """Checkpoint rows follow the run's checkpoints folder (the trainer keeps only the newest few)."""
        folder = Path(job.run_dir or job_dir(job.id) / "run") / "checkpoints"
        on_disk = {}
        for path in folder.glob("step-*"):
            if (path / "adapter" / "adapter_config.json").is_file():
                on_disk[int(path.name.split("-")[1])] = path
        known = {c.step: c for c in db.scalars(select(JobCheckpoint).where(JobCheckpoint.job_id == job.id))}
        for step, checkpoint in known.items():
            if step not in on_disk:
                db.delete(checkpoint)
        for step in sorted(set(on_disk) - set(known)):
            metrics = _step_metrics(Path(job.run_dir) / "metrics.jsonl", step)
            db.add(JobCheckpoint(id=new_id("ftckpt_"), job_id=job.id, step=step,
                                 fine_tuned_model_checkpoint=checkpoint_name(job, step),
                                 metrics_json=json.dumps(metrics), path=str(on_disk[step] / "adapter"),
                                 created_at=utc_now()))

    def _finish(self, job_id: str, requested: str | None, code: int | None, folder: Path) -> None:
        outcome_path = folder / "outcome.json"
        outcome = json.loads(outcome_path.read_text()) if outcome_path.is_file() else None
        outcome_path.unlink(missing_ok=True)  # a later attempt writes its own
        with session(self.engine) as db:
            job = db.get(FineTuningJob, job_id)
            if job.status != "running" or job.worker_id != self.name:
                return
            job.worker_id, job.lease_expires_at, job.requested = None, None, None
            if requested == "cancel":
                job.status, job.finished_at = "cancelled", utc_now()
                add_event(db, job_id, "The job was cancelled; its last checkpoint is kept")
                audit_job(db, job, "cancelled", self.actor)
            elif requested == "pause":
                job.status = "paused"
                add_event(db, job_id, "The job was paused after writing a checkpoint; resume continues there")
                audit_job(db, job, "paused", self.actor)
            elif requested == "requeue":
                job.status = "queued"
                add_event(db, job_id, "The worker shut down; the job is queued to continue from its checkpoint")
                audit_job(db, job, "requeued", self.actor)
            elif outcome and outcome.get("ok") and not outcome.get("interrupted"):
                self._succeed(db, job, folder, outcome.get("evaluation"))
            else:
                message = (outcome or {}).get("error") or _crash_message(code)
                hint = (outcome or {}).get("hint")
                fail(db, job, "training_failed", without_server_paths(message + (f" ({hint})" if hint else ""),
                                                                      folder), actor=self.actor)

    def _succeed(self, db, job: FineTuningJob, folder: Path, evaluation: dict | None) -> None:
        """Register the model version with its evaluation, attach the results CSV, and mark the job succeeded, all
        in one transaction."""
        run_dir = folder / "run"
        summary = json.loads((run_dir / "summary.json").read_text())
        config = _yaml(run_dir / "config.yaml")
        results = FileStore(self.db_url).add_result(job.project, f"{job.id}-results.csv",
                                                   results_csv(run_dir / "metrics.jsonl"), actor=self.actor)
        weights_dir = Path(summary["adapter_dir"] or summary["model_dir"])
        name = model_name(job)
        training = db.get(StoredFile, job.training_file)
        Registry(self.db_url).register(
            db, project=job.project, name=name, base_model=job.base_model,
            base_fingerprint=summary["base_model_fingerprint"], job_id=job.id,
            training_file_sha256=training.sha256 if training else None, dataset_id=summary.get("dataset_id"),
            config=config, metrics={k: summary.get(k) for k in ("steps", "final_train_loss", "best_eval_loss",
                                                                 "tokens", "tokens_per_s", "train_seconds", "replay")},
            run_dir=run_dir, weights_dir=weights_dir, eval_report=evaluation,
            verdict=(evaluation or {}).get("verdict"), actor=self.actor, model=job.suffix or job.model,
            author=job.created_by)
        job.status, job.finished_at, job.fine_tuned_model = "succeeded", utc_now(), name
        job.evaluation_json = json.dumps(evaluation) if evaluation else None
        job.trained_tokens = summary.get("tokens")
        job.result_files_json = json.dumps([results.id])
        job.estimated_finish = None
        audit_job(db, job, "succeeded", self.actor, fine_tuned_model=name, trained_tokens=job.trained_tokens,
                  verdict=(evaluation or {}).get("verdict"))
        try:
            write_version_cards(db, name)
        except Exception as error:  # the model trained and is registered: a missing card is a warning, not a failure
            log.warning("job %s: the model card could not be written", job.id, exc_info=True)
            add_event(db, job.id, "The model card (README.md) could not be written: "
                      + without_server_paths(str(error), folder), level="warn")
        add_event(db, job.id, f"New fine-tuned model created: {name}", data={"fine_tuned_model": name})
        add_event(db, job.id, "The job has successfully completed" + evaluation_sentence(evaluation),
                  level="warn" if evaluation and evaluation.get("verdict") not in (None, "SHIP") else "info",
                  data={"evaluation": evaluation} if evaluation else None)

    def _fail_unexpectedly(self, job_id: str) -> None:
        with session(self.engine) as db:
            job = db.get(FineTuningJob, job_id)
            if job is not None and job.status == "running" and job.worker_id == self.name:
                fail(db, job, "server_error", "the worker hit an internal error; the server log has the details",
                     actor=self.actor)


def without_server_paths(message: str, folder: Path) -> str:
    """A training error as the client may see it: the job's folder and $HONE_HOME named, not spelled out."""
    return message.replace(str(folder), "(the job's folder)").replace(str(hone_home()), "$HONE_HOME")


def evaluation_sentence(evaluation: dict | None) -> str:
    """The verdict of the evaluation after training, for the job's last event ('' when there was none)."""
    if not evaluation:
        return ""
    if "error" in evaluation:
        return f"; the evaluation after training could not run: {evaluation['error']}"
    reasons = "; ".join(evaluation.get("reasons") or [])
    return f"; evaluation verdict {evaluation['verdict']}" + (f": {reasons}" if reasons else "")


def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text()) or {}


def _step_metrics(metrics_path: Path, step: int) -> dict:
    """OpenAI's checkpoint metrics for `step` from the run's metrics log."""
    if not metrics_path.is_file():
        return {"step": step}
    for line in metrics_path.read_text().splitlines():
        record = json.loads(line)
        if record.get("step") == step:
            metrics = {"step": step, "train_loss": record.get("train_loss")}
            if "eval_loss" in record:
                metrics["valid_loss"] = record["eval_loss"]
            return metrics
    return {"step": step}


def _estimated_finish(record: dict):
    """When the run should end at its current pace (None until the pace is known)."""
    total, step, rate = record.get("total_steps"), record.get("step"), record.get("tokens_per_s")
    if not (total and step and rate and record.get("tokens")):
        return None
    seconds_per_step = record["tokens"] / rate / step
    return utc_now() + timedelta(seconds=seconds_per_step * max(0, total - step))


def _crash_message(code: int | None) -> str:
    if code is not None and code < 0:
        return (f"training was killed by signal {-code} (out of memory is the usual cause); lower "
                "hone.training.batch_size or hone.data.max_length, or use hone.method 'qlora'")
    return f"training ended unexpectedly (exit code {code}); the job's train.log has the details"


def start_in_thread(worker: Worker) -> threading.Thread:
    """Run `worker` in a daemon thread (the in-process worker of `hone serve`)."""
    thread = threading.Thread(target=worker.run, name="hone-worker", daemon=True)
    thread.start()
    return thread

