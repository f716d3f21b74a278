"""Shared pieces of the fine-tuning jobs tests: data files, a job service on the tiny model, waiting."""

from __future__ import annotations

import json
import time
from pathlib import Path

ANIMALS = ["cat", "dog", "fox", "owl", "bee", "eel", "ant", "yak"]
FAST = {"tracking": {"enabled": False}, "eval": {"enabled": False}, "replay": None}  # each costs seconds per job


def chat_lines(count: int) -> list[str]:
    return [json.dumps({"messages": [{"role": "user", "content": f"which animal is number {i}?"},
                                     {"role": "assistant", "content": f'{{"animal": "{ANIMALS[i % 8]}"}}'}]})
            for i in range(count)]


def dpo_lines(count: int) -> list[str]:
    return [json.dumps({"input": {"messages": [{"role": "user", "content": f"animal {i}?"}]},
                        "preferred_output": [{"role": "assistant", "content": ANIMALS[i % 8]}],
                        "non_preferred_output": [{"role": "assistant", "content": "no idea"}]})
            for i in range(count)]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_for(predicate, seconds: float = 60, every: float = 0.1):
    """Poll `predicate()` until it returns something truthy; fail the test after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {seconds} s waiting for {predicate}")


def adapter_weights(job_folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(job_folder / "run" / "adapter" / "adapter_model.safetensors"))
