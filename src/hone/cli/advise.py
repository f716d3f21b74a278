"""`hone advise --train TRAIN.jsonl --test TEST.jsonl [--docs DIR] [--budget-minutes N]`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from hone.cli.output import console, emit_json
from hone.cli.output import errors as stderr


def advise(
    train: Annotated[Path, typer.Option(help="Training conversations (any chat format).")],
    test: Annotated[Path, typer.Option(help="Held-out conversations; the last assistant turn is the reference.")],
    docs: Annotated[Path | None, typer.Option(help="Folder of .txt/.md documents: RAG retrieves passages from "
                                              "it instead of similar training examples.")] = None,
    budget_minutes: Annotated[float, typer.Option(help="Wall-clock budget for the whole comparison.")] = 15,
    base: Annotated[str, typer.Option(help="Base model.")] = "smollm2-135m-instruct",
    out: Annotated[Path, typer.Option(help="Folder for advice.json, the eval report and the short run.")] = Path(
        "advice"),
    labels: Annotated[str | None, typer.Option(help="Comma-separated label set (turns on accuracy).")] = None,
    label_field: Annotated[str | None, typer.Option(help="JSON field of the reply holding the label.")] = None,
    metric: Annotated[str | None, typer.Option(help="Metric to decide on (default: accuracy with labels, JSON "
                                               "field accuracy for JSON answers, else token F1).")] = None,
    threshold: Annotated[float, typer.Option(help="Points fine-tuning must win by to be worth it.")] = 5.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Prompting, RAG, fine-tuning or a hybrid? Measure all within a time budget and get a recommendation."""
    from hone.advise import advise as run_advise

    label_set = [label.strip() for label in labels.split(",") if label.strip()] if labels else None
    advice = run_advise(train, test, out, docs=docs, budget_minutes=budget_minutes, base=base, labels=label_set,
                        label_field=label_field, primary_metric=metric, threshold=threshold,
                        show_progress=not as_json)
    if as_json:
        emit_json(advice)
        return
    _print_advice(advice)


def _cell(value) -> str:
    return "-" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value)


def _print_advice(advice: dict) -> None:
    metric = advice["primary_metric"]
    table = Table("candidate", "approach", metric, "vs zero-shot (95% CI)", "prompt tokens", "latency s",
                  "one-off training s", title=f"{advice['sample']['test_examples']} test examples")
    for row in advice["evidence"]:
        change = row["vs_zero_shot"]
        shown = "-" if not change else f"{change['delta']:+.1f} [{change['ci_low']:+.1f}, {change['ci_high']:+.1f}]"
        table.add_row(row["candidate"], row["approach"], _cell(row[metric]), shown, _cell(row["prompt_tokens"]),
                      _cell(row["latency_s"]), _cell(row["one_off_training_s"]))
    console.print(table)
    for warning in advice["warnings"]:
        stderr.print(f"warning: {warning}")
    recommendation = advice["recommendation"]
    console.print(f"recommendation: {recommendation['approach'] or 'none'}: {recommendation['reason']}")
    console.print(f"advice: {advice['paths']['advice']}")
    console.print(f"report: {advice['paths']['report']}")
