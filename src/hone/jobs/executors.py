"""Where a job's training runs: a child process on this machine (the default), or a Ray cluster.

An executor starts the training of a job folder and hands back a handle the worker polls; stopping asks
the training to write a checkpoint and exit (SIGTERM), and kills it if it does not within the grace time.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Protocol

PR_SET_PDEATHSIG = 1
TRAIN_LOG = "train.log"


class Training(Protocol):
    """A job's training in progress."""

    def poll(self) -> int | None:
        """The exit code once it has ended, else None."""

    def stop(self) -> None:
        """Ask it to checkpoint and end after the current step."""

    def kill(self) -> None:
        """End it now."""


class Executor(Protocol):
    name: str

    def start(self, job_id: str, folder: Path) -> Training:
        """Start training the job whose config and data are in `folder`."""


def _die_with_parent() -> None:
    """In the child: be killed when the worker that started it dies (kill -9 included), so a job whose worker
    is gone never trains twice once another worker takes it over."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


class ChildProcess:
    """Training in a child process (`python -m hone.jobs.child FOLDER`), its output in FOLDER/train.log."""

    def __init__(self, folder: Path):
        log = open(folder / TRAIN_LOG, "ab")
        try:
            self.process = subprocess.Popen([sys.executable, "-m", "hone.jobs.child", str(folder)], stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        finally:
            log.close()

    def poll(self) -> int | None:
        return self.process.poll()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class LocalExecutor:
    """Each job trains in a child process of the worker, so a crash or out-of-memory stays in that process."""

    name = "local"

    def start(self, job_id: str, folder: Path) -> Training:
        return ChildProcess(folder)


def wait_for_exit(training: Training, seconds: float, poll_s: float = 0.1) -> int | None:
    """Poll until the training ends or `seconds` pass; its exit code, or None."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        code = training.poll()
        if code is not None:
            return code
        time.sleep(poll_s)
    return training.poll()
