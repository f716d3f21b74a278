"""`hone train CONFIG.yaml [--set key=value ...] [--dry-run] [--resume RUN_DIR] [--nproc N]`."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.text import Text

from hone.cli.output import console, emit_json
from hone.cli.output import errors as stderr
from hone.errors import HoneError
from hone.train.config import load_config


def train(
    config: Path | None = typer.Argument(None, help="Training config YAML (not needed with --resume)."),
    set_: list[str] = typer.Option([], "--set", help="Override a setting: --set training.lr=1e-4"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show trained tokens, counts and time estimate."),
    resume: Path | None = typer.Option(None, "--resume", help="Continue the run in this run directory."),
    no_estimate: bool = typer.Option(False, "--no-estimate", help="With --dry-run: skip the timed step."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Train in N processes on this machine, data parallel "
                              "(gloo on CPU, nccl with one GPU each); same global batch, same run."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Fine-tune a base model; prints the run directory."""
    from hone.train.distributed import is_main
    from hone.train.run import train as run_training

    if config is None and resume is None:
        raise HoneError("give a config file, or --resume RUN_DIR to continue a run")
    if nproc > 1 and not dry_run:
        raise typer.Exit(_launch(nproc, config, set_, resume, as_json))
    if resume is not None:
        run_dir = run_training(None, resume_dir=resume, show_progress=not as_json)
    else:
        settings = load_config(config, set_)
        if dry_run:
            from hone.train.dry_run import dry_run as plan

            report = plan(settings, measure=not no_estimate)
            emit_json(report) if as_json else _print_plan(report)
            return
        run_dir = run_training(settings, config_path=config, show_progress=not as_json)
    if not is_main():
        return  # rank 0 reports the run
    summary = json.loads((run_dir / "summary.json").read_text())
    if as_json:
        emit_json(summary)
        return
    console.print(f"trained {summary['steps']} steps, {summary['tokens_per_s']} tokens/s, "
                  f"final train loss {summary['final_train_loss']:.4f}"
                  + (f", best eval loss {summary['best_eval_loss']:.4f}" if summary["best_eval_loss"] else ""))
    _print_replay(summary["replay"])
    if summary["interrupted"]:
        console.print(f"interrupted: continue with `hone train --resume {run_dir}`")
    print(run_dir)


def _print_replay(replay: dict) -> None:
    """One line on the general examples mixed in (replay off is warned about on stderr by the training)."""
    if replay["examples"]:
        source = replay["settings"]["source"]
        origin = "answered by the base model" if source == "self" else f"from {source}"
        console.print(f"replay: {replay['examples']} general examples {origin} mixed in (fingerprint "
                      f"{replay['fingerprint'][:12]})")
    elif replay["note"]:
        console.print(f"replay: {replay['note']}")


def _launch(nproc: int, config: Path | None, set_: list[str], resume: Path | None, as_json: bool) -> int:
    """Start `hone train` in `nproc` local processes; the config is checked here first, before any starts."""
    from hone.train.distributed import Distributed, launch_local
    from hone.train.run import read_run_config, refuse_finished_run

    settings = read_run_config(resume) if resume is not None else load_config(config, set_)
    if resume is not None:
        refuse_finished_run(resume)  # one message here rather than one from each process
    Distributed(world_size=nproc).check_batch_size(settings.training.batch_size)
    args = ["--resume", str(resume)] if resume is not None else [str(config), *(f"--set={item}" for item in set_)]
    return launch_local(nproc, ["train", *args, *(["--json"] if as_json else [])])


def _print_plan(report: dict) -> None:
    text = Text()
    plain = not console.is_terminal  # without colours, trained text is wrapped in [[ ]] instead
    for segment, trained in report["example"]["segments"]:
        if plain and trained:
            segment = f"[[{segment}]]"
        text.append(segment, style="bold green" if trained else "dim")
    console.print("[bold]first example[/bold] (trained tokens " + ("in [[ ]]" if plain else "in green") + "):")
    console.print(text)
    tokens = report["tokens"]
    console.print(f"examples: {report['examples']['train']} train, {report['examples']['eval']} eval, "
                  f"skipped: {report['examples']['skipped'] or 'none'}")
    console.print(f"tokens: {tokens['train']} total, {tokens['trained']} trained, mean length "
                  f"{tokens['mean_length']}, max {tokens['max_length']}")
    console.print(f"optimizer steps: {report['optimizer_steps']} ({report['micro_batches_per_epoch']} "
                  "micro-batches per epoch)")
    if "packing" in report:
        console.print(f"packing: {report['packing']['rows']} rows, {report['packing']['efficiency']:.1%} of their "
                      "tokens are real")
    memory = report["memory"]
    parts = ", ".join(f"{name.replace('_', ' ')} {value / 2**30:.2f}" for name, value in memory["bytes"].items())
    console.print(f"memory: about {memory['total_gib']:.1f} GiB ({parts}); {memory['available_gib']:.1f} GiB free")
    if memory["warning"]:
        stderr.print(f"warning: {memory['warning']}")
    if "estimate" in report:
        est = report["estimate"]
        console.print(f"estimate: {est['tokens_per_s']} tokens/s, about {est['seconds_per_epoch'] / 60:.1f} "
                      "min per epoch")
