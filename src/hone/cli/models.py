"""`hone models list` and `hone models info NAME`."""

from __future__ import annotations

import typer
from rich.table import Table

from hone.cli.output import console, emit_json
from hone.models import CATALOG, fingerprint, is_cached, resolve
from hone.models.info import describe

app = typer.Typer(help="Base models available on this machine.", no_args_is_help=True)


@app.command("list")
def list_models(as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """List the catalog models and whether each is installed and cached."""
    rows = []
    for name, entry in CATALOG.items():
        try:
            resolve(name)
            installed, cached = True, is_cached(name)
        except Exception:
            installed, cached = False, False
        rows.append({"name": name, "installed": installed, "cached": cached, "package": entry.package,
                     "description": entry.description})
    if as_json:
        emit_json({"models": rows})
        return
    table = Table("name", "installed", "cached", "description")
    for row in rows:
        table.add_row(row["name"], "yes" if row["installed"] else "no", "yes" if row["cached"] else "no",
                      row["description"])
    console.print(table)
    console.print("Any local Hugging Face model folder or .gguf file path is accepted too.")


@app.command("info")
def info(
    name: str = typer.Argument(..., help="Catalog name, Hugging Face model folder or .gguf file."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Show a model's architecture, size, chat template, cache location and fingerprint."""
    details = describe(name)
    details["fingerprint"] = fingerprint(name)
    if as_json:
        emit_json(details)
        return
    for key, value in details.items():
        console.print(f"[bold]{key}[/bold]: {value}")
