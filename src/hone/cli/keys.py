"""`hone keys create|list|revoke`: API keys for `hone serve`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from hone.cli.output import cli_actor, console, emit_json
from hone.cli.output import errors as stderr

app = typer.Typer(help="API keys that clients of `hone serve` send as `Authorization: Bearer KEY`.",
                  no_args_is_help=True)

DbOption = Annotated[str | None, typer.Option("--db", help="Database URL (default: $HONE_DATABASE_URL, else "
                                              "sqlite:///$HONE_HOME/hone.db).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


@app.command("create")
def create(name: Annotated[str, typer.Argument(help="A name for who uses the key, e.g. support-app.")],
           project: Annotated[str, typer.Option(help="The project whose objects the key sees (only those).")]
           = "default",
           role: Annotated[str, typer.Option(help="viewer (reads), developer (also uploads, creates jobs, calls "
                                             "models), approver (also approves), admin (also the server's disk).")]
           = "developer",
           db: DbOption = None, as_json: JsonOption = False) -> None:
    """Create a key and print it once; only its hash is stored, so copy it now."""
    from hone.api.keys import KeyStore  # imported on use: keeps the CLI's start-up light
    key = KeyStore(db).create(name, project, role, actor=cli_actor())
    if as_json:
        emit_json({"name": name, "project": project, "role": role, "key": key})
        return
    console.print(key, soft_wrap=True)
    stderr.print(f"API key '{name}' ({role} of project {project}) created. It is shown only this once: store it in "
                 "your secrets manager.")


@app.command("list")
def list_keys(db: DbOption = None, as_json: JsonOption = False) -> None:
    """List every key: name, prefix, when it was created and whether it is revoked (never the key itself)."""
    from hone.api.keys import KeyStore  # imported on use: keeps the CLI's start-up light
    keys = KeyStore(db).list()
    if as_json:
        emit_json({"keys": keys})
        return
    if not keys:
        console.print("No API keys: `hone serve` accepts requests without one. Create one with `hone keys create`.")
        return
    table = Table("name", "project", "role", "prefix", "created", "status")
    for key in keys:
        table.add_row(key["name"], key["project"], key["role"], key["prefix"] + "...", key["created_at"],
                      "revoked" if key["revoked"] else "active")
    console.print(table)


@app.command("revoke")
def revoke(name: Annotated[str, typer.Argument(help="Name of the active key to revoke.")],
           db: DbOption = None, as_json: JsonOption = False) -> None:
    """Revoke a key: the server refuses it from the next request on."""
    from hone.api.keys import KeyStore  # imported on use: keeps the CLI's start-up light
    KeyStore(db).revoke(name, actor=cli_actor())
    if as_json:
        emit_json({"name": name, "revoked": True})
        return
    console.print(f"API key '{name}' revoked.")
