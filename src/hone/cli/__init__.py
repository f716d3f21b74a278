"""The `hone` command line: thin wrappers over each stage's Python API."""

from __future__ import annotations

import sys

import typer

from hone.cli import (
    advise,
    audit,
    canary,
    capture,
    chat,
    data,
    db,
    distill,
    evaluate,
    export,
    index,
    jobs,
    keys,
    loop,
    models,
    monitor,
    projects,
    registry,
    review,
    serve,
    train,
    tune,
)
from hone.errors import HoneError

app = typer.Typer(
    help="hone: fine-tune an open-weights model into your own specialist, and prove it worked.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(models.app, name="models")
app.add_typer(data.app, name="data")
app.command("train")(train.train)
app.command("tune")(tune.tune)
app.command("eval")(evaluate.evaluate)
app.command("chat")(chat.chat)
app.command("advise")(advise.advise)
app.add_typer(keys.app, name="keys")
app.add_typer(capture.app, name="capture")
app.add_typer(index.app, name="index")
app.add_typer(db.app, name="db")
app.command("export")(export.export)
app.command("serve")(serve.serve)
app.add_typer(jobs.app, name="jobs")
app.command("worker")(jobs.worker)
app.add_typer(registry.app, name="registry")
app.add_typer(projects.app, name="projects")
app.add_typer(audit.app, name="audit")
app.add_typer(monitor.app, name="monitor")
app.add_typer(canary.app, name="canary")
app.add_typer(loop.app, name="loop")
app.add_typer(review.app, name="review")
app.add_typer(distill.app, name="distill")


def main() -> None:
    """Console entry point: user errors print one clear message and exit 2, never a traceback."""
    try:
        app()
    except HoneError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
