"""The one FastAPI application of `hone serve`: routers, auth, OpenAI-shaped errors, the body size limit, and
what runs while the app does (lifespan hooks).

To serve a new router, add it to `V1_ROUTERS` (behind the API key, under /v1) or `OPEN_ROUTERS`. To run
something while the app runs (a background worker), call `add_lifespan_hook` in `create_app`.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import Depends, FastAPI
from pydantic.json_schema import models_json_schema

import hone
from hone.api import (
    admin,
    audit,
    canary,
    captures,
    datasets,
    evaluations,
    files,
    fine_tuning,
    indexes,
    inference,
    loop,
    models,
    monitor,
    registry,
    reviews,
)
from hone.api.auth import KeyAuth, require_caller
from hone.api.errors import ErrorResponse, add_error_handlers, error_responses
from hone.api.middleware import BodySizeLimit
from hone.api.protocol import ChatCompletionChunk, CompletionChunk
from hone.serve.config import ServeConfig
from hone.serve.server import ModelServer

log = logging.getLogger("hone.api")
STOP_GRACE_S = 90.0  # a running job writes its checkpoint before the server exits

# Routers served under /v1, each request authenticated by API key (routes take `CurrentCaller` for the project).
V1_ROUTERS = (models.router, inference.router, files.router, fine_tuning.router, audit.router, captures.router,
              registry.router, canary.router, monitor.router, loop.router, datasets.router, evaluations.router,
              reviews.router, indexes.router)
# Routers open without a key.
OPEN_ROUTERS = (admin.router,)
# Bodies the routes document by reference (error bodies, stream chunks) rather than as their return type.
REFERENCED_MODELS = (ErrorResponse, ChatCompletionChunk, CompletionChunk, audit.AuditExportLine)


@dataclass(frozen=True)
class LifespanHook:
    """Something that runs while the app does: `start` at startup, `stop` at shutdown; either may be async."""

    name: str
    start: Callable[[], object]
    stop: Callable[[], object]


def add_lifespan_hook(app: FastAPI, name: str, start: Callable[[], object], stop: Callable[[], object]) -> None:
    """Run `start` when `app` starts (after the hooks added before it) and `stop` when it stops (before them)."""
    app.state.lifespan_hooks.append(LifespanHook(name, start, stop))


async def _call(function: Callable[[], object]) -> None:
    result = function()
    if inspect.isawaitable(result):
        await result


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the hooks in order and stop the started ones in reverse, even when a later one failed to start."""
    started: list[LifespanHook] = []
    try:
        for hook in app.state.lifespan_hooks:
            await _call(hook.start)
            started.append(hook)
        yield
    finally:
        for hook in reversed(started):
            try:
                await _call(hook.stop)
            except Exception:  # the other hooks must still stop
                log.exception("stopping %s failed", hook.name)


def create_app(config: ServeConfig, api_keys: Sequence[str] = (), worker: bool | None = None) -> FastAPI:
    """The application serving `config`'s base model and adapters, files and fine-tuning jobs; `api_keys` are
    accepted besides the keys in the database. The model is loaded here; the engine decodes while the app runs,
    and so does one job worker unless `worker` (default: config.jobs.worker) is False."""
    auth = KeyAuth(config.database, api_keys, required=config.api_key_required)
    server = ModelServer(config)
    app = FastAPI(title="hone", version=hone.__version__, lifespan=_lifespan,
                  description="OpenAI-compatible serving of a base model and its LoRA adapters.")
    app.state.server = server
    app.state.auth = auth
    app.state.lifespan_hooks = []
    add_lifespan_hook(app, "engine", server.start, server.stop)
    _add_jobs(app, config, worker)
    app.add_middleware(BodySizeLimit, max_bytes=config.limits.max_request_bytes,
                       streamed={"/v1/files": config.limits.max_upload_bytes,
                                 "/datasets/upload": config.limits.max_upload_bytes})
    add_error_handlers(app)
    for router in V1_ROUTERS:
        app.include_router(router, prefix="/v1", dependencies=[Depends(require_caller)],
                           responses=error_responses(401))
    for router in OPEN_ROUTERS:
        app.include_router(router)
    _document_referenced_models(app)
    from hone.web.app import add_dashboard  # the dashboard sits over the API

    add_dashboard(app)
    return app


def _add_jobs(app: FastAPI, config: ServeConfig, worker: bool | None) -> None:
    """The files and jobs services, and the in-process worker that trains queued jobs while the app runs."""
    from hone.jobs.files import FileStore, remove_stale_uploads
    from hone.jobs.service import JobService
    from hone.jobs.worker import Worker, WorkerSettings, start_in_thread

    jobs = config.jobs
    removed = remove_stale_uploads()
    if removed:
        log.warning("removed %d partial upload(s) that an earlier server left behind", removed)
    app.state.files = FileStore(config.database)
    app.state.max_upload_bytes = config.limits.max_upload_bytes
    if not (jobs.worker if worker is None else worker):
        app.state.jobs = JobService(config.database, bases=config.job_bases())
        return
    running = Worker(config.database, settings=WorkerSettings(lease_s=jobs.lease_s, poll_s=jobs.poll_s))
    app.state.jobs = JobService(config.database, bases=config.job_bases(), on_queued=running.nudge)
    threads = []

    def stop() -> None:
        running.stop()
        for thread in threads:
            thread.join(timeout=STOP_GRACE_S)

    add_lifespan_hook(app, "worker", lambda: threads.append(start_in_thread(running)), stop)


def _document_referenced_models(app: FastAPI) -> None:
    """Add REFERENCED_MODELS to the OpenAPI schema's components, where the routes' `$ref`s point."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            _, definitions = models_json_schema([(model, "serialization") for model in REFERENCED_MODELS],
                                                ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in definitions.get("$defs", {}).items():
                components.setdefault(name, definition)
        return app.openapi_schema

    app.openapi = openapi
