"""`hone serve`: the OpenAI-compatible server for a base model and its LoRA adapters."""

from __future__ import annotations

import sys
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
        help="Accept this API key (repeatable; held hashed in memory). Keys from `hone keys` always count.")] = None,
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

    settings = load_serve_config(config, adapters=parse_adapters(adapter or []), base=base,
                                 max_adapters=max_adapters, max_batch=max_batch, api_key_required=api_key_required)
    app = create_app(settings, api_keys=api_key or [], worker=worker)
    url = f"http://{host}:{port}/v1"
    ready = {"url": url, "base": settings.served_base, "adapters": sorted(settings.adapters)}
    if as_json:
        emit_json(ready)
    else:
        print(f"hone serving {settings.served_base} and {len(settings.adapters)} adapter(s) at {url}", file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level="warning")
