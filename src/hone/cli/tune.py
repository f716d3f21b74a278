"""`hone tune CONFIG.yaml --trials N [--set key=value ...] [--space FILE.yaml] [--out DIR] [--json]`."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import typer
from rich.table import Table

from hone.cli.output import console, emit_json
from hone.cli.output import errors as stderr


def tune(
    config: Path = typer.Argument(..., help="Training config YAML; it needs an eval set."),
    trials: int = typer.Option(..., "--trials", min=1, help="Trials to run now (added to the study in --out)."),
    set_: list[str] = typer.Option([], "--set", help="Override a setting for every trial: --set training.max_steps=50"),
    space: Path | None = typer.Option(None, "--space", help="Search space YAML, replacing the default "
                                      "(training.lr, lora.r, lora.alpha, lora.dropout, training.batch_size)."),
    out: Path | None = typer.Option(None, "--out", help="Study folder (default OUTPUT_DIR/tune-CONFIG); "
                                    "run again with the same folder to add trials."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Search hyperparameters with Optuna; prints a results table and writes the best config to OUT/best.yaml."""
    from hone.train.tune import TrialResult, load_space
    from hone.train.tune import tune as run_tune

    def progress(result: TrialResult) -> None:
        loss = f"{result.best_eval_loss:.4f}" if result.best_eval_loss is not None else "-"
        stderr.print(f"trial {result.number}: {result.state}, best eval loss {loss}, {result.steps} steps, "
                     f"{result.seconds}s", highlight=False)

    report = run_tune(config, trials, overrides=set_, space=load_space(space) if space else None, out=out,
                      on_trial=progress)
    if as_json:
        emit_json(asdict(report))
        return
    console.print(_table(report))
    if report.best is None:
        console.print("no trial completed yet, so there is no best config")
        return
    console.print(f"best: trial {report.best.number}, eval loss {report.best.best_eval_loss:.4f}")
    print(report.best_config_path)


def _table(report) -> Table:
    table = Table("trial", "state", *report.keys, "best eval loss", "steps", "seconds")
    for result in report.trials:
        values = [_cell(result.values.get(key)) for key in report.keys]
        loss = f"{result.best_eval_loss:.4f}" if result.best_eval_loss is not None else "-"
        table.add_row(str(result.number), result.state, *values, loss, _cell(result.steps), _cell(result.seconds))
    return table


def _cell(value) -> str:
    """Floats in 4 significant digits, so 1e-05 and 0.0731 both stay readable."""
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
