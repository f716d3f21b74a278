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


@app.command("run")
def run(config: Annotated[Path, typer.Argument(help="A distill run config (.yaml).")],
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False) -> None:
    """Label -> filter -> dataset version -> train the student (a fine-tuning job) -> evaluate teacher, student and
    base; prints how much of the teacher's quality the student kept, the cost per 1,000 requests and the verdict.
    Run the same command again to resume: nothing the teacher answered is asked again."""
    from hone.distill.run import load_run_config, run_distillation

    report = run_distillation(load_run_config(config), show_progress=not as_json)
    if as_json:
        emit_json(report)
        return
    print(Path(report["paths"]["markdown"]).read_text(encoding="utf-8"))
    print(report["paths"]["markdown"])


@app.command("generate")
def generate(config: Annotated[Path, typer.Argument(help="A distill generate config (.yaml).")],
             as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False) -> None:
    """The teacher writes new inputs from the seeds (topic x persona x difficulty), the near duplicates are dropped,
    and the teacher answers the rest as `label` does; a diversity report compares them with the seeds."""
    from hone.distill.generate import generate as run_generate
    from hone.distill.generate import load_generate_config

    summary = run_generate(load_generate_config(config), show_progress=not as_json)
    if as_json:
        emit_json(summary)
        return
    counts, inputs, seeds = (summary["diversity"][k] for k in ("counts", "inputs", "seeds"))
    dropped = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in counts["dropped"].items() if n)
    console.print(f"{counts['kept']} new inputs kept of {counts['asked']} asked in {summary['rounds']} round(s)"
                  f"{'; dropped: ' + dropped if dropped else ''}", soft_wrap=True)
    console.print(f"{summary['labeled']} of {summary['prompts']} answered by {summary['teacher']}; "
                  f"{summary['failed']} failed, {summary['not_asked']} not asked (token budget), "
                  f"{summary['rejected']} rejected by the filters", soft_wrap=True)
    console.print(f"diversity: distinct-2 {inputs['distinct_2']} (seeds {seeds['distinct_2']}), embedding spread "
                  f"{inputs['embedding_spread']} (seeds {seeds['embedding_spread']}); "
                  f"see {Path(summary['out']) / 'diversity.json'}", soft_wrap=True)
    if counts["dropped"]["failed"] or not summary["complete"]:
        console.print("run the same command again to retry what failed (nothing already answered is asked again)",
                      soft_wrap=True)
    print(Path(summary["out"]) / "labeled.jsonl")
