"""`hone db upgrade|current`: the schema revision of hone's database."""

from __future__ import annotations

from typing import Annotated

import typer

from hone.cli.output import console, emit_json

app = typer.Typer(help="hone's database: its schema revision and numbered migrations (applied at start-up too).",
                  no_args_is_help=True)

DbOption = Annotated[str | None, typer.Option("--db", help="Database URL (default: $HONE_DATABASE_URL, else "
                                              "sqlite:///$HONE_HOME/hone.db).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


@app.command("upgrade")
def upgrade(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Apply pending migrations; a database from before migrations is stamped at the first revision first."""
    from hone.store import database_url, redacted_url, upgrade_database
    from hone.store.schema import FIRST_REVISION
    result = upgrade_database(db)
    if as_json:
        emit_json({"database": redacted_url(database_url(db)), "before": result.before, "after": result.after,
                   "applied": list(result.applied), "stamped_pre_migrations": result.stamped_pre_migrations})
        return
    if result.stamped_pre_migrations:
        console.print(f"found tables from before numbered migrations: stamped them at revision {FIRST_REVISION}")
    if result.applied:
        console.print(f"upgraded {redacted_url(database_url(db))} from revision {result.before or 'none'} to "
                      f"{result.after} (applied {', '.join(result.applied)})")
    else:
        console.print(f"{redacted_url(database_url(db))} is already at the newest revision, {result.after}")


@app.command("current")
def current(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Print the database's schema revision and whether it is up to date; changes nothing."""
    from hone.store import database_schema, database_url, redacted_url
    state = database_schema(db)
    if as_json:
        emit_json({"database": redacted_url(database_url(db)), "revision": state.revision, "head": state.head,
                   "up_to_date": state.up_to_date, "pending": list(state.pending),
                   "pre_migrations": state.pre_migrations})
        return
    revision = state.revision or ("none (tables from before numbered migrations)" if state.pre_migrations
                                  else "none (no hone tables yet)")
    console.print(f"{redacted_url(database_url(db))}: revision {revision}")
    if state.up_to_date:
        console.print(f"up to date (newest revision: {state.head})")
    else:
        console.print(f"not up to date: {', '.join(state.pending)} pending (newest revision: {state.head}); "
                      "`hone db upgrade` or the next start of hone applies them")
