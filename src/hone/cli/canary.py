"""`hone canary ...`: split an alias's traffic between its champion and a challenger (canary or shadow), compare
the two arms live, and roll back or offer the challenger for promotion."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer

from hone.cli.output import cli_actor, console, emit_json

app = typer.Typer(help="Canary and shadow splits of an alias, compared live.", no_args_is_help=True)

DbOption = Annotated[str | None, typer.Option("--db", help="Database URL (default: $HONE_DATABASE_URL, else "
                                              "sqlite:///$HONE_HOME/hone.db).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
ProjectOption = Annotated[str, typer.Option("--project", help="The model's project.")]
AliasOption = Annotated[str, typer.Option("--alias", help="The alias whose traffic is split.")]


def _print(split, comparison) -> None:
    console.print(f"[bold]{split.id}[/bold] {split.model}@{split.alias} {split.mode} {split.weight:g} "
                  f"(sticky per {split.sticky}) [bold]{split.status}[/bold]", soft_wrap=True)
    console.print(f"  champion   {split.champion_version}\n  challenger {split.challenger_version}", soft_wrap=True)
    if comparison is not None:
        for arm in (comparison.champion, comparison.challenger):
            validity = f"{arm.format_validity:.1%}" if arm.format_validity is not None else "-"
            console.print(f"  {arm.arm:10} {arm.requests} requests, format validity {validity}, "
                          f"{arm.rated} rated (mean {arm.mean_rating if arm.mean_rating is not None else '-'}), "
                          f"median latency {arm.latency_ms_median if arm.latency_ms_median is not None else '-'} ms",
                          soft_wrap=True)
        for test in comparison.tests:
            console.print(f"  {test.status:14} {test.detail}", soft_wrap=True)
        if comparison.needed:
            console.print(f"  {comparison.needed} more challenger requests fill the window of "
                          f"{comparison.window_requests}", soft_wrap=True)
    if split.outcome:
        console.print(f"  outcome: {split.outcome['detail']}", soft_wrap=True)
        promotion = split.outcome.get("promotion")
        if promotion:
            console.print(f"  promotion: {promotion['status']}"
                          + (f" ({promotion['request_id']})" if promotion.get("request_id") else "")
                          + (f": {promotion['message']}" if promotion.get("message") else ""), soft_wrap=True)


def _payload(split, comparison) -> dict:
    return {**asdict(split), "comparison": asdict(comparison) if comparison is not None else None}


@app.command("start")
def start(model: str, challenger: Annotated[str, typer.Option("--challenger", help="The challenger's version "
                                                               "number or name.")],
          alias: AliasOption = "champion",
          weight: Annotated[float, typer.Option("--weight", help="Share of requests the challenger answers (or, "
                                                "with --shadow, that are copied to it).")] = 0.1,
          shadow: Annotated[bool, typer.Option("--shadow", help="The challenger answers a copy of the requests; its "
                                               "replies are captured, never returned.")] = False,
          sticky: Annotated[str, typer.Option("--sticky", help="user, conversation or request.")] = "user",
          window: Annotated[int, typer.Option("--window", help="Challenger requests after which a split that found "
                                              "nothing worse passes.")] = 200,
          reason: Annotated[str | None, typer.Option("--reason", help="Why (kept in the audit log).")] = None,
          project: ProjectOption = "default", db: DbOption = None, as_json: JsonOption = False) -> None:
    """Split MODEL@ALIAS between its current version (the champion) and a challenger."""
    from hone.monitor.canary import Canaries

    split = Canaries(db).start(project, model, alias, challenger, mode="shadow" if shadow else "canary",
                               weight=weight, sticky=sticky, window_requests=window, actor=cli_actor(), reason=reason)
    if as_json:
        emit_json(_payload(split, None))
        return
    _print(split, None)


@app.command("status")
def status(model: str, alias: Annotated[str | None, typer.Option("--alias", help="Only this alias's splits.")] = None,
           project: ProjectOption = "default", db: DbOption = None, as_json: JsonOption = False) -> None:
    """The model's splits, newest first, each with its two arms compared."""
    from hone.monitor.canary import Canaries

    canaries = Canaries(db)
    splits = [(s, canaries.compare(project, s.id)) for s in canaries.list(project, model=model, alias=alias)]
    if as_json:
        emit_json({"canaries": [_payload(s, c) for s, c in splits]})
        return
    if not splits:
        console.print(f"{model} has no canary or shadow splits in project {project}")
    for split, comparison in splits:
        _print(split, comparison)


@app.command("check")
def check(project: Annotated[str | None, typer.Option("--project", help="Only this project's splits (default: "
                                                      "all).")] = None,
          db: DbOption = None, as_json: JsonOption = False) -> None:
    """Decide every active split now: roll back the worse, pass (and ask to promote) those that held their window."""
    from hone.monitor.canary import Canaries

    decisions = Canaries(db).check_all(actor=cli_actor(), project=project)
    if as_json:
        emit_json({"decisions": [{"action": d.action, **_payload(d.split, d.comparison)} for d in decisions]})
        return
    if not decisions:
        console.print("no active splits")
    for decision in decisions:
        console.print(f"{decision.action}:", end=" ")
        _print(decision.split, decision.comparison)


@app.command("stop")
def stop(split_id: str, reason: Annotated[str | None, typer.Option("--reason", help="Why.")] = None,
         project: ProjectOption = "default", db: DbOption = None, as_json: JsonOption = False) -> None:
    """End an active split: all traffic back to the champion."""
    from hone.monitor.canary import Canaries

    split = Canaries(db).stop(project, split_id, actor=cli_actor(), reason=reason)
    if as_json:
        emit_json(_payload(split, None))
        return
    _print(split, None)
