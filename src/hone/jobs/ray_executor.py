"""Fine-tuning jobs on a Ray cluster: each job's training is a Ray job, submitted through Ray's job API.

The Ray job runs `python -m hone.jobs.child JOB_DIR`, as the local executor's child process does, so the job
folder (config, data, run) must be on storage every Ray node mounts at the same path as the worker: $HONE_HOME on a
shared file system. The worker follows the run folder exactly as it does for a local job.

A job's Ray submissions are named JOB_ID, then JOB_ID-2, JOB_ID-3... for each later attempt (resumed after a pause,
taken over from a worker that died), and recorded in JOB_DIR/ray.json. A worker that takes over a job whose Ray
job is still pending or running adopts that Ray job rather than submitting another, so a job never trains twice.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from hone.errors import HoneError
from hone.home import hone_home
from hone.jobs.child import OUTCOME
from hone.jobs.executors import TRAIN_LOG
from hone.jobs.worker import STOP_GRACE_S
from hone.store.db import DATABASE_ENV

log = logging.getLogger("hone.jobs")
RECORD = "ray.json"
ACTIVE = ("PENDING", "RUNNING")
STOPPED_CODE = 128 + signal.SIGTERM  # what a shell reports for a command ended by SIGTERM
FOLDER_NOT_SHARED = 78  # the entrypoint's exit code when the node cannot see the job folder (sysexits EX_CONFIG)
UNREACHABLE_S = 300.0  # a running job whose Ray cluster stays unreachable this long fails
GPUS_ENV, CPUS_ENV = "HONE_RAY_NUM_GPUS", "HONE_RAY_NUM_CPUS"
INSTALL_HINT = "pip install 'hone[ray]' where the worker runs (and hone with ray[default] on every Ray node)"
ADDRESS_HINT = ("pass the address of the head node's job API (the Ray dashboard, port 8265 by default): "
                "`hone worker --executor ray --ray-address http://HEAD:8265`, the head started with "
                "`ray start --head --include-dashboard=true` (a GCS address such as HEAD:6379 is not the job API)")


def submission_id(job_id: str, attempt: int) -> str:
    """The Ray submission id of a job's `attempt`-th submission: JOB_ID, then JOB_ID-2, JOB_ID-3..."""
    return job_id if attempt == 1 else f"{job_id}-{attempt}"


def attempt_of(job_id: str, submission: str) -> int | None:
    """Which attempt of `job_id` the Ray submission id `submission` is, or None when it belongs to another job."""
    if submission == job_id:
        return 1
    prefix, _, number = submission.rpartition("-")
    return int(number) if prefix == job_id and number.isdigit() else None


@dataclass
class Submissions:
    """JOB_DIR/ray.json: the job's Ray submission ids, oldest first, and the handle that controls the newest."""

    ids: list[str] = field(default_factory=list)
    holder: str | None = None
    address: str | None = None

    @classmethod
    def load(cls, folder: Path) -> Submissions:
        path = folder / RECORD
        if not path.is_file():
            return cls()
        raw = json.loads(path.read_text())
        return cls(list(raw.get("submissions", [])), raw.get("holder"), raw.get("address"))

    def save(self, folder: Path) -> None:
        temporary = folder / f".{RECORD}.{os.getpid()}"
        temporary.write_text(json.dumps({"submissions": self.ids, "holder": self.holder, "address": self.address}))
        os.replace(temporary, folder / RECORD)  # a reader never sees half a file


def connect(address: str | None):
    """Ray's job submission client for the cluster at `address` (None: $RAY_ADDRESS, else a cluster on this
    machine), its connection checked."""
    try:
        from ray import exceptions as ray_errors
        from ray.job_submission import JobSubmissionClient
    except ImportError as error:
        raise HoneError("the ray executor needs Ray's job submission client, which is not installed",
                        hint=INSTALL_HINT) from error
    refused = getattr(ray_errors, "AuthenticationError", ())  # newer Rays have token authentication
    if address and "://" not in address and address != "auto":
        address = f"http://{address}"  # Ray would read a bare HOST:PORT as a GCS address and retry it for minutes
    where = address or "the Ray cluster on this machine (no --ray-address and no RAY_ADDRESS given)"
    try:
        return JobSubmissionClient(address)
    except refused as error:
        raise HoneError(f"the Ray job API at {where} refused hone's requests: {error}",
                        hint="the cluster uses token authentication: give the hone worker its token with "
                        "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH)") from error
    except OSError as error:  # refused, unknown host, timed out, or no local cluster found
        raise HoneError(f"cannot reach the Ray job API at {where}: {error}", hint=ADDRESS_HINT) from error
    except RuntimeError as error:
        if "ray[default]" in str(error):
            raise HoneError("Ray is installed without its job submission client (ray[default])",
                            hint=INSTALL_HINT) from error
        raise HoneError(f"{where} does not answer as a Ray job API: {error}", hint=ADDRESS_HINT) from error


def _resource(value: float | None, env: str) -> float | None:
    """An entrypoint resource: `value`, else the number in $`env`, else None (Ray's default: none reserved)."""
    if value is not None or not os.environ.get(env):
        return value
    try:
        return float(os.environ[env])
    except ValueError:
        raise HoneError(f"${env} is {os.environ[env]!r}, not a number",
                        hint=f"set {env} to how many the training of one job reserves, e.g. 1") from None


class RayExecutor:
    """Runs each job's training as a Ray job on an existing cluster.

    `num_gpus` / `num_cpus` are reserved for each job's training (default $HONE_RAY_NUM_GPUS / $HONE_RAY_NUM_CPUS,
    else none: the training then runs on the head node). `python` is the interpreter on the Ray nodes that has hone.
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, num_gpus: float | None = None, num_cpus: float | None = None,
                 python: str = "python", stop_grace_s: float = STOP_GRACE_S):
        self.client = connect(address)
        self.address = self.client.get_address()
        self.num_gpus = _resource(num_gpus, GPUS_ENV)
        self.num_cpus = _resource(num_cpus, CPUS_ENV)
        self.python = python
        self.stop_grace_s = stop_grace_s

    def start(self, job_id: str, folder: Path) -> RayTraining:
        """Submit the job's training, or adopt its Ray job when an earlier submission is still pending or running
        (or ended without its outcome having been reported)."""
        folder = Path(folder).resolve()
        try:
            return self._start(job_id, folder)
        except (OSError, RuntimeError) as error:  # Ray's client reports HTTP failures as RuntimeError
            raise HoneError(f"cannot start job {job_id} on the Ray cluster at {self.address}: {error}",
                            hint="check the Ray head and `ray job list`; " + ADDRESS_HINT) from error

    def _start(self, job_id: str, folder: Path) -> RayTraining:
        record = Submissions.load(folder)
        on_cluster = self._submissions(job_id)
        attempts = {attempt_of(job_id, s) for s in [*record.ids, *on_cluster]} - {None}
        newest = submission_id(job_id, max(attempts)) if attempts else None
        record.holder, record.address = uuid.uuid4().hex, self.address
        info = on_cluster.get(newest)
        if info is not None and (info.status in ACTIVE or (info.status in ("SUCCEEDED", "FAILED")
                                                             and (folder / OUTCOME).is_file())):
            record.save(folder)
            log.info("job %s: adopting its Ray job %s (%s)", job_id, newest, info.status)
            return RayTraining(self, newest, folder, record.holder)
        # A newest id the cluster does not know was recorded but never submitted (or the cluster was replaced).
        chosen = newest if newest and info is None else submission_id(job_id, max(attempts, default=0) + 1)
        if chosen not in record.ids:
            record.ids.append(chosen)
        record.save(folder)  # before submitting, so a worker that dies in between is found out by the next one
        (folder / OUTCOME).unlink(missing_ok=True)  # this attempt writes its own
        self.client.submit_job(entrypoint=self.entrypoint(folder), submission_id=chosen,
                               runtime_env={"env_vars": self.env_vars()}, metadata={"hone_job": job_id},
                               entrypoint_num_gpus=self.num_gpus, entrypoint_num_cpus=self.num_cpus)
        log.info("job %s: submitted to Ray at %s as %s", job_id, self.address, chosen)
        return RayTraining(self, chosen, folder, record.holder)

    def _submissions(self, job_id: str) -> dict:
        """The job's Ray jobs the cluster knows, by submission id."""
        return {j.submission_id: j for j in self.client.list_jobs()
                if j.submission_id and attempt_of(job_id, j.submission_id) is not None}

    def entrypoint(self, folder: Path) -> str:
        """The shell command a Ray node runs: the job's training, its output in JOB_DIR/train.log as locally."""
        where = shlex.quote(str(folder))
        missing = shlex.quote(f"hone: the job folder {folder} is not visible on this Ray node: HONE_HOME must be on "
                              "storage every Ray node mounts at the same path as the hone worker")
        # exec: the training itself gets Ray's SIGTERM (and is the process whose exit code Ray reports).
        return (f"cd {where} 2>/dev/null || {{ echo {missing}; exit {FOLDER_NOT_SHARED}; }}; "
                f"exec {shlex.quote(self.python)} -m hone.jobs.child {where} >> {shlex.quote(TRAIN_LOG)} 2>&1")

    def env_vars(self) -> dict[str, str]:
        """What the training on the cluster must see: the same hone home and database as this worker, and the grace
        Ray gives it between SIGTERM and SIGKILL (Ray's default, 3 s, is too short to write a checkpoint)."""
        env = {"HONE_HOME": str(hone_home().resolve()),
               "RAY_JOB_STOP_WAIT_TIME_S": str(math.ceil(self.stop_grace_s))}
        if os.environ.get(DATABASE_ENV):
            env[DATABASE_ENV] = os.environ[DATABASE_ENV]
        return env


class RayTraining:
    """A job's training running as the Ray job `submission_id`.

    Ray's states: PENDING/RUNNING -> poll() None; SUCCEEDED -> 0; FAILED -> the training's exit code (1 when it
    has none); STOPPED -> 143, as a shell reports a command ended by SIGTERM.
    """

    def __init__(self, executor: RayExecutor, submission_id: str, folder: Path, holder: str):
        self.client = executor.client
        self.address = executor.address
        self.stop_grace_s = executor.stop_grace_s
        self.submission_id = submission_id
        self.folder = folder
        self.holder = holder
        self.unreachable_since: float | None = None
        self.reported = False

    def status(self) -> str | None:
        """Ray's state of the job (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED), or None while the cluster cannot
        be asked; fails when it stays unreachable for UNREACHABLE_S."""
        info = self._info()
        return str(info.status) if info is not None else None

    def _info(self):
        try:
            info = self.client.get_job_info(self.submission_id)
        except (OSError, RuntimeError) as error:  # a restarting head or a network blip must not fail the job
            now = time.monotonic()
            self.unreachable_since = self.unreachable_since or now
            if now - self.unreachable_since > UNREACHABLE_S:
                raise HoneError(f"the Ray job API at {self.address} has not answered about {self.submission_id} "
                                f"for {UNREACHABLE_S:.0f} s: {error}",
                                hint=f"check the Ray head; `ray job status {self.submission_id}` shows the job"
                                ) from error
            log.warning("cannot read Ray job %s at %s: %s", self.submission_id, self.address, error)
            return None
        self.unreachable_since = None
        return info

    def poll(self) -> int | None:
        info = self._info()
        if info is None or info.status in ACTIVE:
            return None
        if info.status == "SUCCEEDED":
            return 0
        code = STOPPED_CODE if info.status == "STOPPED" else (info.driver_exit_code or 1)
        if not self.reported and not (self.folder / OUTCOME).is_file():
            self._report(info, code)
        self.reported = True
        return code

    def _report(self, info, code: int) -> None:
        """A Ray job that ended without the training's outcome: Ray's reason goes to train.log, and where the
        failure was Ray's rather than the training's (job folder not shared, runtime_env, a lost node) becomes the
        job's error."""
        message = (info.message or "").strip()
        with open(self.folder / TRAIN_LOG, "a") as handle:
            handle.write(f"Ray job {self.submission_id} at {self.address} ended {info.status}: {message}\n")
        if code == FOLDER_NOT_SHARED:
            outcome = {"ok": False, "error": f"the job folder {self.folder} is not visible on the Ray node that ran "
                       "its training", "hint": "put HONE_HOME on storage every Ray node mounts at the same path"}
        elif info.status == "FAILED" and info.driver_exit_code is None:
            outcome = {"ok": False, "error": f"the Ray job {self.submission_id} failed outside the training: "
                       f"{message.splitlines()[0] if message else 'Ray gave no reason'}",
                       "hint": f"`ray job logs {self.submission_id}` has the details"}
        else:
            return
        (self.folder / OUTCOME).write_text(json.dumps(outcome))

    def controls(self) -> bool:
        """False once another worker has taken the job over and adopted its Ray job (this handle then leaves it be)."""
        return Submissions.load(self.folder).holder in (None, self.holder)

    def stop(self) -> None:
        """Ray sends the training SIGTERM (it writes a checkpoint after the current step) and SIGKILL after the
        grace time set at submission."""
        if self.controls() and self.status() in ACTIVE:
            try:
                self.client.stop_job(self.submission_id)
            except (OSError, RuntimeError) as error:  # the worker asks again (kill) when it does not end
                log.warning("cannot stop Ray job %s at %s: %s", self.submission_id, self.address, error)

    def kill(self) -> None:
        """Stop the Ray job and wait until it has ended (Ray's job API cannot kill at once: SIGKILL comes after
        the grace time)."""
        if not self.controls():
            log.info("Ray job %s is adopted by another worker; leaving it running", self.submission_id)
            return
        self.stop()
        deadline = time.monotonic() + self.stop_grace_s + 30
        while time.monotonic() < deadline:
            if self.status() not in (*ACTIVE, None):
                return
            time.sleep(0.2)
        log.warning("Ray job %s at %s still runs %.0f s after it was stopped", self.submission_id, self.address,
                    self.stop_grace_s + 30)
