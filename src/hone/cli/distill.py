"""`hone distill ...`: a teacher model answers prompts to make the student's training data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hone.cli.output import console, emit_json

app = typer.Typer(help="Distillation: a teacher model labels the student's training data.", no_args_is_help=True)


@app.command("label")
def label(config: Annotated[Path, typer.Argument(help="A distill label config (.yaml).")],
          as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False) -> None:
    """The teacher answers every prompt (with retries, a token budget and an answer cache, so a rerun resumes);
    the answers become chat examples with their lineage; the failures are listed with their reasons."""
    from hone.distill.label import label as run_label
    from hone.distill.label import load_label_config

    summary = run_label(load_label_config(config), show_progress=not as_json)
    if as_json:
        emit_json(summary)
        return
    usage = summary["usage"]
    console.print(f"{summary['labeled']} of {summary['prompts']} prompts labeled by {summary['teacher']}; "
                  f"{summary['failed']} failed, {summary['not_asked']} not asked (token budget)", soft_wrap=True)
    cost = f", cost {usage['cost']:.4f}" if usage["cost"] is not None else ""
    console.print(f"teacher: {usage['requests']} requests, {usage['retries']} retries, {usage['cached']} answers "
                  f"from the cache, {usage['prompt_tokens']} + {usage['completion_tokens']} tokens{cost}",
                  soft_wrap=True)
    if not summary["complete"]:
        console.print(f"see {Path(summary['out']) / 'failures.jsonl'}; run the same command again to retry them "
                      "(answers already given are not asked again)", soft_wrap=True)
    print(Path(summary["out"]) / "labeled.jsonl")
