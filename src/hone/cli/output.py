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


def cli_actor() -> str:
    """Who the audit log names for a change made from the command line: the machine's user."""
    import getpass

    try:
        return f"cli {getpass.getuser()}"
    except (KeyError, OSError):  # no name for this uid (containers)
        return "cli"
