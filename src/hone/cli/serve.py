"""`hone serve`: the OpenAI-compatible server for a base model and its LoRA adapters."""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import typer

from hone.cli.output import emit_json
from hone.errors import HoneError


def parse_adapters(values: list[str]) -> dict[str, Path]:
    """`NAME=RUN_DIR` pairs from repeated --adapter options."""
    adapters = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise HoneError(f"--adapter {value!r}: expected NAME=RUN_DIR", hint="e.g. --adapter legal=runs/legal-v3")
        adapters[name] = Path(path)
    return adapters


KEYS_ENV = "HONE_API_KEYS"
COMMAND_LINE_KEY_WARNING = ("warning: --api-key puts the key on the command line, where other users of this machine "
                            f"can read it (ps, /proc); use --api-key-file PATH or {KEYS_ENV}=KEY1,KEY2 instead")


def gather_api_keys(cli_keys: list[str], key_file: Path | None, environ: Mapping[str, str]) -> list[str]:
    """The keys `hone serve` accepts from --api-key, --api-key-file (one a line) and $HONE_API_KEYS (commas)."""
    keys = list(cli_keys)
    if key_file is not None:
        try:
            lines = key_file.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise HoneError(f"--api-key-file {key_file}: cannot read it ({error})",
                            hint="give a text file with one API key per line") from None
        keys += [line.strip() for line in lines if line.strip()]
    keys += [key.strip() for key in environ.get(KEYS_ENV, "").split(",") if key.strip()]
    return keys


def is_loopback(host: str) -> bool:
    """Whether `host` only listens on this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def open_server_warning(host: str, has_keys: bool) -> str | None:
    """The warning for a server that accepts every request without an API key (None when keys exist)."""
    if has_keys:
        return None
    if is_loopback(host):
        return (f"warning: no API key is configured, so every program on this machine can use this server ({host}); "
                f"create one with `hone keys create NAME`, --api-key-file PATH or {KEYS_ENV}")
    return (f"WARNING: no API key is configured and the server listens on {host}: ANYONE WHO CAN REACH THIS PORT "
            "can use and fine-tune its models, with no key. Create one with `hone keys create NAME`, "
            f"--api-key-file PATH or {KEYS_ENV}, or listen on 127.0.0.1")


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0 for every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port.")] = 8000,
    base: Annotated[str | None, typer.Option(help="Base model: catalog name, model folder or .gguf file.")] = None,
    adapter: Annotated[list[str] | None, typer.Option(
        help="NAME=RUN_DIR: serve this adapter as model NAME (repeatable).")] = None,
    config: Annotated[Path | None, typer.Option(help="serve.yaml with models, adapters and limits.")] = None,
    max_adapters: Annotated[int | None, typer.Option(min=1, help="Adapters kept in memory at once (LRU).")] = None,
    max_batch: Annotated[int | None, typer.Option(min=1, help="Sequences decoded together per step.")] = None,
    api_key: Annotated[list[str] | None, typer.Option(
        help="Accept this API key (repeatable; held hashed in memory). Visible to other users in `ps`: prefer "
        "--api-key-file or $HONE_API_KEYS. Keys from `hone keys` always count.")] = None,
    api_key_file: Annotated[Path | None, typer.Option(
        help="Accept the API keys in this file (one a line). $HONE_API_KEYS (comma-separated) adds more.")] = None,
    api_key_required: Annotated[bool | None, typer.Option(
        "--api-key-required/--no-api-key-required", help="Refuse to start unless an API key exists.")] = None,
    worker: Annotated[bool | None, typer.Option(
        "--worker/--no-worker", help="Train queued fine-tuning jobs in this server (default: on).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object once the server is ready.")] = False,
) -> None:
    """Serve the base model and every adapter behind one OpenAI-compatible /v1 API, batched together."""
    import uvicorn

    from hone.api.app import create_app
    from hone.serve.config import load_serve_config

    if api_key:
        print(COMMAND_LINE_KEY_WARNING, file=sys.stderr)
    keys = gather_api_keys(api_key or [], api_key_file, os.environ)
    settings = load_serve_config(config, adapters=parse_adapters(adapter or []), base=base,
                                 max_adapters=max_adapters, max_batch=max_batch, api_key_required=api_key_required)
    app = create_app(settings, api_keys=keys, worker=worker)
    warning = open_server_warning(host, app.state.auth.keys_required())
    if warning:
        print(warning, file=sys.stderr)
    url = f"http://{host}:{port}/v1"
    dashboard = f"http://{host}:{port}/"
    ready = {"url": url, "dashboard": dashboard, "base": settings.served_base, "adapters": sorted(settings.adapters)}
    if as_json:
        emit_json(ready)
    else:
        print(f"hone serving {settings.served_base} and {len(settings.adapters)} adapter(s) at {url}", file=sys.stderr)
        print(f"dashboard: {dashboard}", file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level="warning")
