"""`hone registry list|show`: registered model versions and their lineage."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from hone.cli.output import console, emit_json

app = typer.Typer(help="Registered fine-tuned models and where each came from.", no_args_is_help=True)

DbOption = Annotated[str | None, typer.Option("--db", help="Database URL (default: $HONE_DATABASE_URL, else "
                                              "sqlite:///$HONE_HOME/hone.db).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


@app.command("list")
def list_versions(project: Annotated[str | None, typer.Option(help="Only this project's models.")] = None,
                  db: DbOption = None, as_json: JsonOption = False) -> None:
    """Every registered model version, newest first."""
    from hone.registry.versions import Registry

    versions = Registry(db).list(project)
    if as_json:
        emit_json({"models": versions})
        return
    table = Table("name", "base", "verdict", "train loss", "created")
    for v in versions:
        loss = v["metrics"].get("final_train_loss")
        table.add_row(v["name"], v["base_model"], v["verdict"] or "-", f"{loss:.4f}" if loss is not None else "-",
                      v["created_at"][:16])
    console.print(table)


@app.command("show")
def show(name: str, db: DbOption = None, as_json: JsonOption = False) -> None:
    """One model version and its lineage chain: dataset -> job -> run -> weights -> eval."""
    from hone.registry.versions import Registry

    version = Registry(db).show(name)
    if as_json:
        emit_json(version)
        return
    console.print(f"[bold]{version['name']}[/bold]  base {version['base_model']} "
                  f"(fingerprint {version['base_fingerprint'][:12]})")
    for link in version["lineage"]:
        stage = link.pop("stage")
        console.print(f"  {stage:8} " + ", ".join(f"{k}={v}" for k, v in link.items() if v not in (None, [])),
                      soft_wrap=True)
