"""`hone loop status|check`: the retraining loop of a project (triggers -> retrain -> challenger vs champion ->
canary), over the same Python API as `/v1/loop`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from hone.cli.output import console, emit_json

app = typer.Typer(help="The retraining loop: what fired, what is retraining, evaluating or in canary.",
                  no_args_is_help=True)

DbOption = Annotated[str | None, typer.Option("--db", help="Database URL (default: $HONE_DATABASE_URL, else "
                                              "sqlite:///$HONE_HOME/hone.db).")]
ProjectOption = Annotated[str, typer.Option("--project", help="The project.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


@app.command("status")
def status(project: ProjectOption = "default", model: Annotated[str | None, typer.Option(
        "--model", help="Only this model.")] = None, db: DbOption = None, as_json: JsonOption = False) -> None:
    """Per model: champion, running retrain (and the last failed one's error), pending evaluations, active canary,
    and the latest firings with their status."""
    from hone.monitor.loop import loop_status

    shown = loop_status(project, db_url=db, model=model)
    if as_json:
        emit_json(shown.model_dump(mode="json"))
        return
    console.print(f"project {project}: the loop is {'on' if shown.enabled else 'off (loop.enabled in its settings)'}")
    for entry in shown.models:
        console.print(f"\n[bold]{entry.model}[/bold]  champion: {entry.champion or '(none)'}")
        if entry.running_retrain:
            console.print(f"  retraining: {entry.running_retrain.id} ({entry.running_retrain.status})")
        if entry.last_failed_retrain:
            console.print(f"  last failed retrain: {entry.last_failed_retrain.id}: {entry.last_failed_retrain.error} "
                          "(the champion keeps serving)")
        for pending in entry.pending_evaluations:
            console.print(f"  evaluation {pending.status}: {pending.challenger}")
        if entry.active_canary:
            canary = entry.active_canary
            console.print(f"  {canary.mode} on @{canary.alias}: {canary.challenger_version} ({canary.weight:.0%})")
        if entry.firings:
            table = Table("when", "trigger", "status", "why", "job", "verdicts / error")
            for f in entry.firings:
                outcome = ", ".join(f"{k} {v}" for k, v in f.verdicts.items()) or f.error or ""
                table.add_row(f.created_at[:19], f.trigger, f.status, f.reason, f.job_id or "", outcome)
            console.print(table)


@app.command("check")
def check(project: Annotated[str | None, typer.Option("--project", help="Only this project (default: every "
                                                      "project with the loop on).")] = None,
          db: DbOption = None, as_json: JsonOption = False) -> None:
    """Run the loop's periodic checks once now (what every `hone worker` does every loop_interval_s)."""
    from hone.cli.output import cli_actor
    from hone.monitor.loop import run_periodic

    run = run_periodic(db, cli_actor(), force=True, projects=[project] if project else None)
    if as_json:
        emit_json(run.model_dump(mode="json"))
        return
    if not run.ran:
        console.print(f"the checks did not run: {run.reason}")
        return
    for f in run.firings + run.evaluated:
        console.print(f"{f.model}: {f.trigger} {f.status}: {f.reason}" + (f" (job {f.job_id})" if f.job_id else "")
                      + (f": {f.error}" if f.error else ""))
    console.print(f"{len(run.firings)} firing(s), {len(run.evaluated)} retrain(s) moved on, "
                  f"{run.canary_checks} canary check(s)")
    for problem in run.errors:
        console.print(f"[red]error[/red]: {problem}")
    if run.errors:
        raise typer.Exit(1)
