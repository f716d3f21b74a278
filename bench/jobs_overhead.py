"""What the fine-tuning service adds per job: `jobs.create` -> first optimizer step, and last step -> `succeeded`,
against `hone train` run directly on the same data and settings (its start -> first step, last step -> exit).

Real SmolLM2-135M-Instruct (cached), the demo's 360 support tickets, LoRA, 8 optimizer steps, MLflow and replay
off on both sides, the job's evaluation after training off. `hone serve` runs in its own process with its
in-process worker, driven by the official `openai` SDK over a real socket. Steps are seen when their line lands
in the run's metrics.jsonl (polled every 10 ms on both sides). Prints one JSON line; the target is at most 5 s of
overhead per job.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

MODEL = "smollm2-135m-instruct"
DATA = Path(__file__).resolve().parent.parent / "examples" / "support_tickets" / "train.jsonl"
STEPS = 8
# Replay off on both sides (its answers are cached work, not service overhead), and the job's evaluation after
# training off: it is extra work `hone train` does not do, measured by the eval benchmarks.
SETTINGS = {"training": {"max_steps": STEPS, "batch_size": 8, "seed": 3}, "tracking": {"enabled": False},
            "replay": None}
JOB_ONLY = {"eval": {"enabled": False}}
POLL_S = 0.01


def metrics_lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def watch_steps(metrics: Path, done) -> dict:
    """Times (monotonic) of the first and last step's line appearing, and of `done()` turning true."""
    first = last = None
    while True:
        lines = metrics_lines(metrics)
        now = time.monotonic()
        if lines and first is None:
            first = now
        if lines and lines[-1]["step"] == lines[-1].get("total_steps") and last is None:
            last = now
        if last is not None and done():
            return {"first_step": first, "last_step": last, "done": time.monotonic()}
        time.sleep(POLL_S)


def direct_run(workdir: Path) -> dict:
    """`hone train` on the data, as a user runs it."""
    config = {"base_model": MODEL, "data": {"train": str(DATA)}, "output_dir": str(workdir / "runs"),
              "run_name": "direct", **SETTINGS}
    path = workdir / "direct.yaml"
    path.write_text(yaml.safe_dump(config))
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "hone", "train", str(path)], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
    while not list((workdir / "runs").glob("direct-*/metrics.jsonl")):
        time.sleep(POLL_S)
    metrics = next((workdir / "runs").glob("direct-*/metrics.jsonl"))
    times = watch_steps(metrics, lambda: process.poll() is not None)
    return {"to_first_step": times["first_step"] - started, "after_last_step": times["done"] - times["last_step"]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def service_run(workdir: Path, home: Path) -> dict:
    """The same training as a job on `hone serve`, created and polled with the openai SDK."""
    from openai import OpenAI

    port = free_port()
    env = {**os.environ, "HONE_DATABASE_URL": f"sqlite:///{workdir / 'hone.db'}"}
    server = subprocess.Popen([sys.executable, "-m", "hone", "serve", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        deadline = time.monotonic() + 300
        while True:
            try:
                client.models.list()
                break
            except Exception:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("hone serve did not start") from None
                time.sleep(0.2)
        uploaded = client.files.create(file=DATA.open("rb"), purpose="fine-tune")
        started = time.monotonic()
        job = client.fine_tuning.jobs.create(model=MODEL, training_file=uploaded.id, seed=3,
                                             extra_body={"hone": {**SETTINGS, **JOB_ONLY}})
        metrics = home / "jobs" / job.id / "run" / "metrics.jsonl"
        times = watch_steps(metrics, lambda: client.fine_tuning.jobs.retrieve(job.id).status in
                            ("succeeded", "failed", "cancelled"))
        final = client.fine_tuning.jobs.retrieve(job.id)
        if final.status != "succeeded":
            raise RuntimeError(f"job ended {final.status}: {final.error}")
        return {"to_first_step": times["first_step"] - started, "after_last_step": times["done"] - times["last_step"]}
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    from hone.home import hone_home
    from hone.models import local_model_dir

    local_model_dir(MODEL)  # the model is cached before either side is timed
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        direct = direct_run(workdir)
        service = service_run(workdir, hone_home())
    overhead = {k: round(service[k] - direct[k], 2) for k in direct}
    print(json.dumps({
        "bench": "jobs_overhead", "model": MODEL, "steps": STEPS,
        "direct_s": {k: round(v, 2) for k, v in direct.items()},
        "service_s": {k: round(v, 2) for k, v in service.items()},
        "overhead_s": overhead, "overhead_total_s": round(sum(overhead.values()), 2), "target_s": 5.0,
    }))


if __name__ == "__main__":
    main()
