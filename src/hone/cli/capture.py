"""`hone capture export|stats`: captured traffic and feedback, as training data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from hone.cli.output import console, emit_json

app = typer.Typer(help="Requests and answers captured by `hone serve` (PII masked), with user feedback.",
                  no_args_is_help=True)

DbOption = Annotated[str | None, typer.Option("--db", help="Database URL (default: $HONE_DATABASE_URL, else "
                                              "sqlite:///$HONE_HOME/hone.db).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
ProjectOption = Annotated[str | None, typer.Option(help="Only this project's traffic (default: every project's).")]


@app.command("export")
def export(
    out: Annotated[Path, typer.Argument(help="JSONL file to write (OpenAI chat format).")],
    model: Annotated[str | None, typer.Option(help="Only traffic served by this model or adapter name.")] = None,
    min_rating: Annotated[int | None, typer.Option(help="Only responses rated at least this.")] = None,
    project: ProjectOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write captured conversations as chat JSONL, using corrected answers where users gave them."""
    from hone.monitor.capture import CaptureStore  # imported on use: it loads heavy models' code
    report = CaptureStore(db).export_report(out, min_rating=min_rating, model=model, project=project)
    if as_json:
        emit_json({**report, "model": model, "min_rating": min_rating, "project": project})
        return
    console.print(f"wrote {report['examples']} conversations to {out}")
    if report["skipped"]:
        console.print(f"skipped {report['skipped']} captured exchanges with no prompt or an empty answer and no "
                      "correction")
    if report["examples"]:
        console.print(f"check them with `hone data validate {out}`, then train on them")


@app.command("stats")
def stats(project: ProjectOption = None, db: DbOption = None, as_json: JsonOption = False) -> None:
    """How much traffic and feedback has been captured, per model."""
    from hone.monitor.capture import CaptureStore  # imported on use: it loads heavy models' code
    figures = CaptureStore(db).stats(project)
    if as_json:
        emit_json(figures)
        return
    table = Table("model", "captured", title="captured traffic")
    for name, count in figures["per_model"].items():
        table.add_row(name, str(count))
    console.print(table)
    for key in ("captured", "with_feedback", "ratings", "mean_rating", "corrections", "first", "last"):
        console.print(f"[bold]{key.replace('_', ' ')}[/bold]: {figures[key]}")
