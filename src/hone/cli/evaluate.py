"""`hone eval [CONFIG.yaml] --base NAME --adapter RUN_DIR --data TEST.jsonl --out DIR`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from hone.cli.output import console, emit_json


def evaluate(
    config: Annotated[Path | None, typer.Argument(
        help="Eval YAML with keys base, adapter, data, out, limit, batch_size, max_new_tokens; "
        "flags override it."
    )] = None,
    base: Annotated[str | None, typer.Option(help="Base model (default: the adapter run's base).")] = None,
    adapter: Annotated[Path | None, typer.Option(help="Run directory of `hone train` to test.")] = None,
    data: Annotated[Path | None, typer.Option(
        help="Test file; each chat's last assistant turn is the reference.")] = None,
    out: Annotated[Path | None, typer.Option(help="Folder for report.json and report.html.")] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N examples.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Prompts generated together (default: 16).")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(
        help="Reply length cap (default: 1.5x the longest reference, at most 256).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Compare the base model with the fine-tuned one on a test set: metrics, deltas and an HTML report."""
    from hone.eval import evaluate as run_eval
    from hone.eval import load_eval_config

    flags = {"base": base, "adapter": adapter, "data": data, "out": out, "limit": limit,
             "batch_size": batch_size, "max_new_tokens": max_new_tokens}
    settings = load_eval_config(config, flags)
    report = run_eval(**settings.model_dump(), show_progress=not as_json)
    if as_json:
        emit_json({key: report[key] for key in ("aggregates", "deltas", "significance", "paths")})
        return
    _print_table(report)
    console.print(f"report: {report['paths']['json']}")
    console.print(f"html:   {report['paths']['html']}")


def _print_table(report: dict) -> None:
    from hone.eval.report import metric_rows, table_header

    table = Table(*table_header(report), title=f"{report['config']['examples']} examples")
    for label, cells in metric_rows(report):
        table.add_row(label, *cells)
    console.print(table)
    if report["deltas"] is not None:
        console.print("95% CI: paired bootstrap over the test examples; * = the interval excludes 0")
