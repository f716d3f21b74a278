"""Shared CLI output: one JSON object on stdout with --json, rich text otherwise."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

console = Console()
errors = Console(stderr=True)


def emit_json(payload: Any) -> None:
    """Print exactly one JSON object on stdout."""
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
