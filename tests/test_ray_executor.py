"""Jobs on a Ray cluster: a real single-node Ray head on this machine (CPU), jobs submitted through Ray's job API."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from jobs_helpers import FAST, chat_lines, write_lines

from hone.errors import HoneError
from hone.jobs.executors import wait_for_exit
from hone.jobs.ray_executor import RECORD, RayExecutor
from hone.jobs.service import JobService, job_dir
from hone.jobs.spec import JobRequest
from hone.jobs.worker import Worker, WorkerSettings
from hone.registry.versions import Registry

pytest.importorskip("ray.job_submission", reason="Ray is not installed: `make install` installs hone[ray]")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    import requests

    try:
        return requests.get(f"{url}/api/version", timeout=1).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture(scope="module")
def ray_address():
    """A Ray head on this machine with the job API (1 CPU), started in a session of its own and ended with it."""
    temp = Path(tempfile.mkdtemp(prefix="hone-ray-"))  # short: Ray's socket paths must fit in 107 bytes
    bin_dir = Path(sys.executable).parent
    # The entrypoint's `python` must be this environment's, which has hone.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    dashboard = free_port()
    with open(temp / "head.log", "wb") as head_log:
        head = subprocess.Popen([str(bin_dir / "ray"), "start", "--head", "--block", f"--port={free_port()}",
                                 f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1", "--num-cpus=1",
                                 "--include-dashboard=true", "--disable-usage-stats", f"--temp-dir={temp}"],
                                env=env, stdout=head_log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 90
        while not _answers(url):
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Ray head did not start:\n{(temp / 'head.log').read_text()[-3000:]}")
            time.sleep(0.25)
        yield url
    finally:
        _end_processes(head)
        head.wait(timeout=10)
        shutil.rmtree(temp, ignore_errors=True)


def _end_processes(head: subprocess.Popen) -> None:
    """SIGKILL the throwaway head and every process it started: its descendants and its session's processes (Ray
    reparents some of them); `ray stop` would end every Ray process on the machine, other users' too."""
    for _ in range(5):  # a dying raylet may still have been starting a process
        ours = {}
        for process in psutil.process_iter():
            try:
                if os.getsid(process.pid) == head.pid and process.status() != psutil.STATUS_ZOMBIE:
                    ours[process.pid] = process
            except (OSError, psutil.NoSuchProcess):
                continue
        try:
            ours.update({p.pid: p for p in psutil.Process(head.pid).children(recursive=True)})
        except psutil.NoSuchProcess:
            pass
        if not ours:
            return
        for process in ours.values():
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        head.poll()  # reap the launcher, our own child
        psutil.wait_procs(list(ours.values()), timeout=2)


@pytest.fixture
def service(tiny_model_dir):
    return JobService(bases={"tiny": str(tiny_model_dir)})


def create_job(service: JobService, tmp_path: Path) -> str:
    """A queued 3-step job on the tiny model."""
    path = write_lines(tmp_path / "train.jsonl", chat_lines(12))
    with open(path, "rb") as handle:
        stored = service.files.upload("default", handle, path.name, "fine-tune")
    job = service.create("default", JobRequest(
        model="tiny", training_file=stored.id, seed=7, hone=FAST,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}}))
    assert job["status"] == "queued", job["error"]
    return job["id"]


def ray_jobs_of(executor: RayExecutor, job_id: str) -> dict[str, str]:
    """Every Ray job the cluster lists for `job_id`: submission id -> state."""
    return {j.submission_id: str(j.status) for j in executor.client.list_jobs()
            if (j.submission_id or "").startswith(job_id)}


def test_a_worker_trains_a_job_on_the_ray_cluster(ray_address, service, tmp_path):
    job_id = create_job(service, tmp_path)
    executor = RayExecutor(ray_address)

    assert Worker(executor=executor, settings=WorkerSettings(poll_s=0.2)).run(max_jobs=1) == 1

    done = service.get("default", job_id)
    assert done["status"] == "succeeded", done["error"]
    steps = [e["data"]["step"] for e in service.events("default", job_id, limit=100).data if e["type"] == "metrics"]
    assert sorted(steps) == [1, 2, 3]
    assert ray_jobs_of(executor, job_id) == {job_id: "SUCCEEDED"}  # the submission id is the job id
    assert json.loads((job_dir(job_id) / RECORD).read_text())["submissions"] == [job_id]
    (version,) = [v for v in Registry().list("default") if v["job_id"] == job_id]
    assert version["name"] == done["fine_tuned_model"]
    assert (Path(version["weights_dir"]) / "adapter_model.safetensors").is_file()


def test_a_new_worker_adopts_the_running_ray_job_instead_of_training_twice(ray_address, service, tmp_path):
    job_id = create_job(service, tmp_path)
    folder = job_dir(job_id)
    first = RayExecutor(ray_address).start(job_id, folder)
    assert first.poll() is None

    # The first worker died; the one that takes the job over starts it again.
    taking_over = RayExecutor(ray_address)
    second = taking_over.start(job_id, folder)
    assert second.submission_id == first.submission_id == job_id
    assert second.poll() is None
    first.kill()  # the dead worker's handle no longer controls the adopted Ray job: this leaves it running
    assert second.poll() is None

    assert wait_for_exit(second, 120, poll_s=0.2) == 0
    outcome = json.loads((folder / "outcome.json").read_text())
    assert outcome["ok"] is True and outcome["interrupted"] is False
    assert ray_jobs_of(taking_over, job_id) == {job_id: "SUCCEEDED"}

    # Once the outcome is reported (the worker removes outcome.json), a later attempt is a new submission.
    (folder / "outcome.json").unlink()
    again = RayExecutor(ray_address).start(job_id, folder)
    assert again.submission_id == f"{job_id}-2"
    again.kill()
    assert again.poll() not in (None, 0)
    assert json.loads((folder / RECORD).read_text())["submissions"] == [job_id, f"{job_id}-2"]


def test_an_unreachable_cluster_is_a_clear_error(monkeypatch):
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):  # Ray lets these override the address it is given
        monkeypatch.delenv(name, raising=False)
    address = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(HoneError, match="cannot reach the Ray job API at " + address) as caught:
        RayExecutor(address)
    assert "--ray-address http://HEAD:8265" in caught.value.hint
