"""`hone data ...` commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from hone.cli.output import console, emit_json
from hone.cli.output import errors as stderr
from hone.data.validate import DEFAULT_MODEL, ValidationReport, validate_file
from hone.errors import HoneError
from hone.store.tables import DEFAULT_PROJECT

app = typer.Typer(help="Check and prepare training data.", no_args_is_help=True)

SHOWN_PROBLEMS = 50


def _column_map(pairs: list[str]) -> dict[str, str] | None:
    """`--column prompt=question` options as a {field: column} map."""
    mapping = {}
    for pair in pairs:
        name, sep, column = pair.partition("=")
        if not sep or not name or not column:
            raise HoneError(f"--column {pair!r} is not FIELD=COLUMN", hint="e.g. --column prompt=question")
        mapping[name.strip()] = column.strip()
    return mapping or None


@app.command("validate")
def validate(
    file: Annotated[Path, typer.Argument(help="Dataset file: JSONL (chat, DPO, prompt/completion, alpaca, "
                                         "sharegpt) or .csv.")],
    model: Annotated[str, typer.Option(help="Model whose chat template counts the tokens.")] = DEFAULT_MODEL,
    max_length: Annotated[int, typer.Option(min=1, help="Longest example allowed, in tokens.")] = 2048,
    column: Annotated[list[str] | None, typer.Option(
        "--column", help="CSV only: map a field to a column, e.g. --column prompt=question (fields: prompt, "
        "completion, system, instruction, input, output).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Check a dataset file line by line and show its token statistics; exit code 1 if any error."""
    column_map = _column_map(column or [])
    if as_json:
        report = validate_file(file, model=model, max_length=max_length, column_map=column_map)
        emit_json(report.to_dict())
    else:
        with Progress(TextColumn("counting tokens"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=stderr, transient=True, disable=not stderr.is_terminal) as bar:
            task = bar.add_task("tokens", total=None)
            report = validate_file(file, model=model, max_length=max_length, column_map=column_map,
                                   progress=lambda done, total: bar.update(task, completed=done, total=total))
        _print_report(report)
    if not report.ok:
        raise typer.Exit(1)


def _print_report(report: ValidationReport) -> None:
    stats = report.stats
    console.print(f"[bold]{report.file}[/bold]: {report.format} format, {stats['examples']} usable examples "
                  f"from {stats['lines_read']} lines; tokens counted with {report.model}'s chat template")
    if report.problems:
        table = Table("line", "severity", "field", "message", title="problems")
        for problem in report.problems[:SHOWN_PROBLEMS]:
            style = "red" if problem.severity == "error" else "yellow"
            table.add_row(str(problem.line or "-"), f"[{style}]{problem.severity}[/{style}]",
                          problem.field or "-", problem.message)
        console.print(table)
        if len(report.problems) > SHOWN_PROBLEMS:
            console.print(f"... and {len(report.problems) - SHOWN_PROBLEMS} more problems (--json lists all)")
    table = Table("statistic", "value", title="statistics")
    for key, value in stats.items():
        table.add_row(key.replace("_", " "), str(value))
    console.print(table)
    failures, warnings = len(report.errors), len(report.warnings)
    if failures:
        console.print(f"[red]{failures} error(s)[/red], {warnings} warning(s): fix the errors before "
                      "training")
    else:
        console.print(f"[green]ok[/green]: no errors, {warnings} warning(s)")


@app.command("prepare")
def prepare(
    source: Annotated[Path, typer.Argument(help="A prepare config (.yaml) or one data file / documents folder.")],
    out: Annotated[Path | None, typer.Option(help="Dataset folder to write (overrides the config's out).")] = None,
    strict: Annotated[bool, typer.Option(help="Stop at the first broken input line.")] = False,
    force: Annotated[bool, typer.Option(help="Replace an existing, different dataset version in --out.")] = False,
    project: Annotated[str, typer.Option(help="The project the audit log files the dataset under.")] = DEFAULT_PROJECT,
    db: Annotated[str | None, typer.Option("--db", help="Database URL of the audit log (default: "
                                           "$HONE_DATABASE_URL, else sqlite:///$HONE_HOME/hone.db).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Clean, scrub PII, deduplicate, filter, decontaminate and split data into a versioned dataset folder."""
    from hone.cli.output import cli_actor
    from hone.data.curate.pii import undetectable_warning
    from hone.data.curate.prepare import PrepareConfig, load_prepare_config
    from hone.data.curate.prepare import prepare as build
    from hone.data.versions import record_prepared
    from hone.settings import validate as validate_settings
    from hone.store import engine_for, session

    overrides = {k: v for k, v in {"out": out, "strict": strict or None}.items() if v is not None}
    if source.suffix in (".yaml", ".yml"):
        config = load_prepare_config(source, overrides)
    else:
        if out is None:
            raise HoneError("give --out DIR for the dataset folder", hint=f"hone data prepare {source} --out DIR")
        raw = {"inputs": [{"path": str(source)}], **overrides}
        config = validate_settings(PrepareConfig, raw, "hone data prepare", "data prepare settings")
    if config.pii is not None and (pii_warning := undetectable_warning(config.pii)):
        stderr.print(f"warning: {pii_warning}", markup=False, highlight=False)
    manifest = build(config, force=force)
    with session(engine_for(db)) as transaction:
        record_prepared(transaction, manifest, Path(config.out), project, cli_actor())
    if as_json:
        emit_json(manifest)
        return
    counts, verdict = manifest["counts"], manifest["readiness"]
    table = Table("step", "counts", "removed", title="curation steps")
    for step in manifest["steps"]:
        shown = ", ".join(f"{k}={v}" for k, v in step["counts"].items()) or "-"
        table.add_row(step["name"], shown, str(step["removed"]))
    console.print(table)
    console.print(f"{counts['ingested']} examples in, {counts['broken_lines']} broken lines reported; "
                  f"train {counts['train']}, val {counts['val']}, test {counts['test']}")
    console.print(f"readiness: [bold]{verdict['verdict']}[/bold] - {verdict.get('message', '')}")
    console.print(f"dataset id {manifest['dataset_id']}")
    console.print(f"report: {config.out / 'report.html'}")
    print(config.out)
