"""`hone projects list|create|show|set`: projects and their settings (intended purpose, promotion policy)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
import yaml
from rich.table import Table

from hone.cli.output import cli_actor, console, emit_json
from hone.errors import HoneError

app = typer.Typer(help="Projects: their keys, files, jobs and models, and their settings.", no_args_is_help=True)

DbOption = Annotated[str | None, typer.Option("--db", help="Database URL (default: $HONE_DATABASE_URL, else "
                                              "sqlite:///$HONE_HOME/hone.db).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


@app.command("list")
def list_projects(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Every project with how many keys, files, jobs and models it has."""
    from hone.registry.projects import Projects

    projects = Projects(db).list()
    if as_json:
        emit_json({"projects": projects})
        return
    table = Table("project", "keys", "files", "jobs", "models")
    for p in projects:
        table.add_row(p["name"], str(p["keys"]), str(p["files"]), str(p["jobs"]), str(p["models"]))
    console.print(table)


@app.command("create")
def create(name: str, db: DbOption = None) -> None:
    """Record a project (its keys are made with `hone keys create NAME --project PROJECT --role ROLE`)."""
    from hone.registry.projects import Projects

    Projects(db).create(name, actor=cli_actor())
    console.print(f"project {name} created; add keys with `hone keys create NAME --project {name} --role ROLE`")


@app.command("show")
def show(name: str, db: DbOption = None, as_json: JsonOption = False) -> None:
    """The project's settings, defaults included."""
    from hone.registry.projects import Projects

    settings = Projects(db).settings(name).model_dump(mode="json")
    if as_json:
        emit_json({"name": name, "settings": settings})
        return
    console.print(yaml.safe_dump({name: settings}, sort_keys=False).rstrip())


def _parse_setting(pair: str) -> dict:
    """`promotion.approvals=2` -> {"promotion": {"approvals": 2}}; values are YAML (null resets a default)."""
    key, sep, value = pair.partition("=")
    if not sep or not key:
        raise HoneError(f"setting {pair!r} is not KEY=VALUE", hint="e.g. promotion.approvals=2 or "
                        "intended_purpose='Answer support tickets'")
    change: dict = {}
    target = change
    *parents, last = key.strip().split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[last] = yaml.safe_load(value)
    return change


def _add(change: dict, more: dict) -> None:
    for key, value in more.items():
        if isinstance(value, dict) and isinstance(change.get(key), dict):
            _add(change[key], value)
        else:
            change[key] = value


@app.command("set")
def set_settings(name: str, settings: Annotated[list[str], typer.Argument(help="KEY=VALUE pairs, e.g. "
                                                                          "promotion.approvals=2.")],
                 db: DbOption = None, as_json: JsonOption = False) -> None:
    """Change project settings (audited), e.g. `hone projects set support promotion.max_slice_gap=10`."""
    from hone.registry.projects import Projects

    change: dict = {}
    for pair in settings:
        _add(change, _parse_setting(pair))
    updated = Projects(db).update(name, change, actor=cli_actor()).model_dump(mode="json")
    if as_json:
        emit_json({"name": name, "settings": updated})
        return
    console.print(json.dumps(updated, indent=2))
