"""`hone audit verify|checkpoint|export|list`: the tamper-evident audit trail."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from hone.cli.output import console, emit_json
from hone.cli.output import errors as stderr

app = typer.Typer(help="The audit log every state change appends to: verify it, sign checkpoints, export it.",
                  no_args_is_help=True)

DbOption = Annotated[str | None, typer.Option("--db", help="Database URL (default: $HONE_DATABASE_URL, else "
                                              "sqlite:///$HONE_HOME/hone.db).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
ProjectOption = Annotated[str | None, typer.Option(help="Only this project's entries.")]


@app.command("verify")
def verify(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Recompute the hash chain and check the signed checkpoints; exit 1 if anything was tampered with."""
    from hone.audit import verify as verify_log  # imported on use: keeps the CLI's start-up light
    report = verify_log(db)
    if as_json:
        emit_json(report.to_dict())
    elif report.ok:
        console.print(f"Audit log intact: {report.entries} entries, {report.checkpoints} signed checkpoints"
                      + ("" if report.key_checked else " (no signing key here: signatures checked against the keys "
                         "stored with them only)") + ".")
    else:
        first = report.problems[0]
        stderr.print(f"Audit log TAMPERED: {first.message}"
                     + (f" (and {len(report.problems) - 1} more problems; --json lists them)"
                        if len(report.problems) > 1 else ""))
    if not report.ok:
        raise typer.Exit(1)


@app.command("checkpoint")
def checkpoint(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Sign the log's entry count and head hash with the key in $HONE_AUDIT_KEY (default
    $HONE_HOME/audit/signing.key, created on first use): a later rewrite or cut of the log no longer matches."""
    from hone.audit import checkpoint as sign  # imported on use: keeps the CLI's start-up light
    point = sign(db)
    if as_json:
        emit_json(point)
        return
    console.print(f"Checkpoint {point['id']}: {point['entries']} entries, head {point['head_hash'][:16]}..., "
                  f"signed by {point['public_key'][:16]}...")


@app.command("export")
def export(out: Annotated[Path, typer.Option("--out", help="The JSON lines file to write.")],
           since: Annotated[str | None, typer.Option(help="Only entries created at or after this ISO 8601 time "
                                                     "(UTC unless it names a zone).")] = None,
           project: ProjectOption = None, db: DbOption = None, as_json: JsonOption = False) -> None:
    """Write entries with their hashes, oldest first, one JSON object a line, for an auditor."""
    from hone.audit import export as export_log  # imported on use: keeps the CLI's start-up light
    written = export_log(out, since=since, project=project, db_url=db)
    if as_json:
        emit_json({"out": str(out), "entries": written})
        return
    console.print(f"Wrote {written} audit entries to {out}.")


@app.command("list")
def list_entries(limit: Annotated[int, typer.Option(min=1, help="How many of the newest entries.")] = 50,
                 project: ProjectOption = None, db: DbOption = None, as_json: JsonOption = False) -> None:
    """List the newest entries: who did what to which object, when."""
    from hone.audit import entries  # imported on use: keeps the CLI's start-up light
    found = entries(limit=limit, project=project, db_url=db)
    if as_json:
        emit_json({"entries": [entry.to_dict() for entry in found]})
        return
    if not found:
        console.print("No audit entries yet.")
        return
    table = Table("seq", "created", "project", "actor", "action", "object", "details")
    for entry in found:
        table.add_row(str(entry.seq), entry.created_at, entry.project, entry.actor or "-", entry.action,
                      f"{entry.object_type} {entry.object_id}", json.dumps(entry.details, ensure_ascii=False))
    console.print(table)
