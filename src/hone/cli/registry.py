"""`hone registry ...`: registered model versions, their lineage and technical documentation, aliases with their
history, gated promotions with approvals, rollback, and evaluation against the current champion."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from hone.cli.output import cli_actor, console, emit_json
from hone.errors import HoneError

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
    table = Table("model", "v", "name", "base", "verdict", "train loss", "author", "created")
    for v in versions:
        loss = v["metrics"].get("final_train_loss")
        table.add_row(v["model"], str(v["version"]), v["name"], v["base_model"], v["verdict"] or "-",
                      f"{loss:.4f}" if loss is not None else "-", v["author"] or "-", v["created_at"][:16])
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


@app.command("document")
def document(model: Annotated[str, typer.Argument(help="A full version name (ft:...), MODEL@ALIAS, or a model name "
                                                  "followed by VERSION.")],
             version: Annotated[str | None, typer.Argument(help="The version number of MODEL.")] = None,
             out: Annotated[Path, typer.Option("--out", help="Folder to write the Markdown and HTML to.")] = Path("."),
             project: Annotated[str | None, typer.Option(help="The project of the model (default: any project for a "
                                                         "full version name, else 'default').")] = None,
             db: DbOption = None, as_json: JsonOption = False) -> None:
    """Write the EU AI Act Annex IV technical documentation of a version (Markdown and HTML), from its lineage."""
    from hone.registry.document import document as write_document
    from hone.registry.versions import Registry

    registry = Registry(db)
    name = model
    if version is not None or "@" in model:
        name = registry.resolve(project or "default", model, version)
    paths = write_document(name, project, db, out)
    if as_json:
        emit_json({"model": name, **{kind: str(path) for kind, path in paths.items()}})
        return
    console.print(f"Annex IV technical documentation of {name}: {paths['markdown']} and {paths['html']}",
                  soft_wrap=True)


ProjectOption = Annotated[str, typer.Option("--project", help="The model's project.")]
ReasonOption = Annotated[str | None, typer.Option("--reason", help="Why (kept in the alias history).")]
CommentOption = Annotated[str | None, typer.Option("--comment", help="The approver's comment.")]


def _print_promotion(promotion: dict, as_json: bool) -> None:
    if as_json:
        emit_json(promotion)
        return
    console.print(f"{promotion['id']}: {promotion['model']} -> {promotion['alias']} "
                  f"({promotion['version']}) [bold]{promotion['status']}[/bold]", soft_wrap=True)
    for check in promotion["checks"]:
        console.print(f"  {'ok ' if check['passed'] else 'FAIL'} {check['rule']}: {check['detail']}", soft_wrap=True)
    for decision in promotion["approvals"]:
        console.print(f"  {decision['decision']} by {decision['actor']}"
                      + (f": {decision['comment']}" if decision["comment"] else ""), soft_wrap=True)


@app.command("promote")
def promote(model: str, version: str, alias: Annotated[str, typer.Option("--alias", help="champion, challenger, "
                                                                          "staging or any name.")],
            project: ProjectOption = "default", reason: ReasonOption = None, db: DbOption = None,
            as_json: JsonOption = False) -> None:
    """Ask to point MODEL@ALIAS at VERSION: refused with the reasons when the project's policy fails, else pending
    until approvers (who did not train it) approve."""
    from hone.registry.promotion import Promotions

    _print_promotion(Promotions(db).request(project, model, version, alias, actor=cli_actor(), reason=reason),
                     as_json)


@app.command("approve")
def approve(request_id: str, project: ProjectOption = "default", comment: CommentOption = None,
            db: DbOption = None, as_json: JsonOption = False) -> None:
    """Approve a pending promotion; the last approval the policy needs moves the alias."""
    from hone.registry.promotion import Promotions

    _print_promotion(Promotions(db).approve(project, request_id, actor=cli_actor(), comment=comment), as_json)


@app.command("reject")
def reject(request_id: str, project: ProjectOption = "default", comment: CommentOption = None,
           db: DbOption = None, as_json: JsonOption = False) -> None:
    """Reject a pending promotion."""
    from hone.registry.promotion import Promotions

    _print_promotion(Promotions(db).reject(project, request_id, actor=cli_actor(), comment=comment), as_json)


@app.command("requests")
def requests(project: ProjectOption = "default", model: Annotated[str | None, typer.Option()] = None,
             status: Annotated[str | None, typer.Option(help="pending, promoted, rejected or refused.")] = None,
             db: DbOption = None, as_json: JsonOption = False) -> None:
    """Promotion requests, newest first."""
    from hone.registry.promotion import Promotions

    found = Promotions(db).requests(project, model=model, status=status)
    if as_json:
        emit_json({"requests": found})
        return
    for promotion in found:
        _print_promotion(promotion, False)


@app.command("history")
def history(model: str, project: ProjectOption = "default",
            alias: Annotated[str | None, typer.Option("--alias", help="Only this alias.")] = None,
            db: DbOption = None, as_json: JsonOption = False) -> None:
    """Every move of MODEL's aliases: who, when, from which version, why."""
    from hone.registry.promotion import Promotions

    promotions = Promotions(db)
    moves = promotions.history(project, model, alias)
    if as_json:
        emit_json({"aliases": promotions.aliases(project, model), "history": moves})
        return
    table = Table("when", "alias", "action", "from", "to", "by", "why")
    for move in moves:
        table.add_row(move["created_at"][:19], move["alias"], move["action"], move["from_version"] or "-",
                      move["to_version"] or "-", move["actor"] or "-", move["reason"] or "")
    console.print(table)


@app.command("rollback")
def rollback(model: str, alias: Annotated[str, typer.Option("--alias", help="The alias to move back.")],
             to: Annotated[str | None, typer.Option("--to", help="A version the alias held before (default: the "
                                                    "one before the current).")] = None,
             project: ProjectOption = "default", reason: ReasonOption = None, db: DbOption = None,
             as_json: JsonOption = False) -> None:
    """Point MODEL@ALIAS back at the version it held before, in one step."""
    from hone.registry.promotion import Promotions

    move = Promotions(db).rollback(project, model, alias, actor=cli_actor(), to_version=to, reason=reason)
    if as_json:
        emit_json(move)
        return
    console.print(f"{model}@{alias}: {move['from_version']} -> {move['to_version']}", soft_wrap=True)


@app.command("evaluate")
def evaluate(model: str, version: str,
             against: Annotated[str, typer.Option("--against", help="An alias of MODEL or a version number.")]
             = "champion",
             data: Annotated[Path | None, typer.Option("--data", help="Test file (default: the held-out split of "
                                                       "VERSION's job).")] = None,
             out: Annotated[Path | None, typer.Option("--out", help="Folder for the reports.")] = None,
             max_examples: Annotated[int, typer.Option(help="Test examples per candidate.")] = 100,
             probes: Annotated[int, typer.Option(help="Forgetting probes (0: none).")] = 30,
             project: ProjectOption = "default", db: DbOption = None, as_json: JsonOption = False) -> None:
    """Evaluate VERSION against the version an alias points to, and record the verdict the promotion policy reads."""
    from hone.registry.evaluate import evaluate_against
    from hone.registry.versions import Registry

    shown = Registry(db).show(Registry(db).resolve(project, model, version), project)
    run_dir = Path(shown["run_dir"])
    if data is None:
        from hone.jobs.service import HELD_OUT

        data = run_dir.parent / HELD_OUT
        if not data.is_file():
            raise HoneError(f"version {shown['version']} has no held-out split at {data}", hint="give --data FILE")
    out = out or run_dir / f"eval-against-{against}"
    summary = evaluate_against(project, model, version, against, data=data, out=out, db_url=db,
                               max_examples=max_examples, probe_limit=probes, actor=cli_actor(), show_progress=True)
    if as_json:
        emit_json(summary)
        return
    console.print(f"{summary['candidate']} against {summary['baseline']}: [bold]{summary['verdict']}[/bold]")
    for reason in summary["reasons"]:
        console.print(f"  {reason}", soft_wrap=True)
    console.print(f"report: {summary['report_html']}", soft_wrap=True)
