"""`hone review ...`: blind human review rounds (the same as /v1/reviews and the dashboard's Review page): start a
round from an evaluation, read its results, export its corrections and preference pairs. Reviewers judge in the
dashboard, where they never see which model wrote which reply."""

from __future__ import annotations

from typing import Annotated

import typer

from hone.cli.output import cli_actor, console, emit_json
from hone.store.tables import DEFAULT_PROJECT

app = typer.Typer(help="Blind side-by-side human review of two candidates' replies.", no_args_is_help=True)

DbOption = Annotated[str | None, typer.Option("--db", help="Database URL (default: $HONE_DATABASE_URL, else "
                                              "sqlite:///$HONE_HOME/hone.db).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
ProjectOption = Annotated[str, typer.Option("--project", help="The round's project.")]


def _store(db: str | None):
    from hone.eval.human_review import ReviewStore

    return ReviewStore(db)


@app.command("create")
def create(evaluation: Annotated[str | None, typer.Option("--evaluation", help="An evaluation id (eval-N).")] = None,
           model_version: Annotated[str | None, typer.Option("--model-version", help="Or: a version whose newest "
                                                             "evaluation to sample from.")] = None,
           items: Annotated[int, typer.Option("--items", help="Prompts to sample.")] = 20,
           seed: Annotated[int, typer.Option("--seed", help="Seed of the sample.")] = 0,
           name: Annotated[str | None, typer.Option("--name", help="What reviewers see as the round's name.")] = None,
           project: ProjectOption = DEFAULT_PROJECT, db: DbOption = None, as_json: JsonOption = False) -> None:
    """Start a round from an evaluation's examples: base against fine-tune (or the verdict's two candidates)."""
    made = _store(db).create(project, source="evaluation", actor=cli_actor(), evaluation=evaluation,
                             model_version=model_version, items=items, seed=seed, name=name)
    if as_json:
        emit_json(made.model_dump())
        return
    console.print(f"[bold]{made.id}[/bold] {made.name}: {made.items} items, {made.repeats} shown twice; "
                  f"{' vs '.join(made.candidates or [])}", soft_wrap=True)
    console.print(f"reviewers judge it at /review/{made.id} on the dashboard of `hone serve`", soft_wrap=True)


@app.command("list")
def list_rounds(project: ProjectOption = DEFAULT_PROJECT, db: DbOption = None, as_json: JsonOption = False) -> None:
    """The project's rounds, newest first."""
    rounds = _store(db).list(project, None, True)
    if as_json:
        emit_json({"data": [found.model_dump() for found in rounds]})
        return
    for found in rounds:
        console.print(f"{found.id}  {found.name}  {found.items} items, {found.reviewers} reviewer(s), "
                      f"{found.judgments} judgment(s)", soft_wrap=True)


@app.command("results")
def results(round_id: str, project: ProjectOption = DEFAULT_PROJECT, db: DbOption = None,
            as_json: JsonOption = False) -> None:
    """Win rates with 95% CIs, agreement between reviewers (kappa), consistency and the judge's agreement."""
    found = _store(db).results(project, round_id)
    if as_json:
        emit_json(found.model_dump())
        return
    console.print(f"{found.judgments} judgment(s) of first showings by {len(found.reviewers)} reviewer(s)")
    for candidate in found.candidates:
        rate = "-" if candidate.win_rate is None else f"{candidate.win_rate:.0%}"
        interval = "" if candidate.ci_low is None else f" [{candidate.ci_low:.0%}, {candidate.ci_high:.0%}]"
        console.print(f"  {candidate.name}: win rate {rate}{interval} ({candidate.wins} won, {candidate.losses} "
                      f"lost, {candidate.ties} ties, {candidate.both_bad} both bad)", soft_wrap=True)
    agreement = found.agreement
    console.print(f"agreement: {agreement.method} kappa {agreement.kappa:.2f} on {agreement.items} items"
                  if agreement.kappa is not None else f"agreement: {agreement.reason}", soft_wrap=True)
    judge = found.judge_agreement
    console.print(f"judge agrees with the humans on {judge.rate:.0%} of {judge.items} items"
                  if judge.rate is not None else f"judge: {judge.reason}", soft_wrap=True)


@app.command("export")
def export(round_id: str, project: ProjectOption = DEFAULT_PROJECT, db: DbOption = None,
           as_json: JsonOption = False) -> None:
    """Corrections as a chat fine-tune file (and a curated dataset version), judgments as DPO pairs."""
    from hone.jobs.files import FileStore

    made = _store(db).export(project, round_id, FileStore(db), cli_actor())
    if as_json:
        emit_json(made.model_dump())
        return
    for label, stored in (("corrections", made.corrections_file), ("preference pairs", made.preference_file)):
        if stored is not None:
            console.print(f"{label}: {stored.id} ({stored.filename}, {stored.examples} examples)", soft_wrap=True)
    if made.corrections_dataset:
        console.print(f"corrections dataset version: {made.corrections_dataset}", soft_wrap=True)
    console.print(f"skipped: {made.skipped.tie} ties and {made.skipped.both_bad} both-bad without a correction",
                  soft_wrap=True)
