"""`hone monitor report|drift`: a served model's health per time window and its traffic's drift from its training
data, from the captured traffic."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from hone.cli.output import console, emit_json
from hone.store.tables import DEFAULT_PROJECT

app = typer.Typer(help="Health and drift of served models, from their captured traffic.", no_args_is_help=True)

ModelArgument = Annotated[str, typer.Argument(help="support (all its aliases and versions), support@champion, "
                                              "or a version name (ft:...).")]
DbOption = Annotated[str | None, typer.Option("--db", help="Database URL (default: $HONE_DATABASE_URL, else "
                                              "sqlite:///$HONE_HOME/hone.db).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
ProjectOption = Annotated[str, typer.Option(help="The project whose traffic to read.")]
SinceOption = Annotated[str | None, typer.Option(help="From this time: ISO 8601 (UTC unless zoned) or back from "
                                                 "now, e.g. 2h, 1d (default: the first request).")]
AliasOption = Annotated[str | None, typer.Option(help="Only traffic sent through this alias.")]


def _plain(value: Any) -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(type(value)).dump_python(value, mode="json")


def _shown(value: float | None, needed: int, scale: float = 1.0, unit: str = "") -> str:
    return f"[dim]needed: {needed}[/dim]" if value is None else f"{value * scale:.1f}{unit}"


@app.command("report")
def report(
    model: ModelArgument,
    project: ProjectOption = DEFAULT_PROJECT,
    since: SinceOption = None,
    window: Annotated[str, typer.Option(help="Window length: 15m, 1h, 1d ...")] = "1h",
    alias: AliasOption = None,
    html: Annotated[Path | None, typer.Option("--html", help="Also write an HTML report with charts here.")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Requests, latency, tokens per second, lengths, refusal/empty/truncated and format validity rates, ratings and
    corrections per window; a figure from too little traffic says how many more requests it needs."""
    from hone.monitor.report import health, parse_duration, parse_since

    found = health(project, model, db_url=db, since=parse_since(since), window=parse_duration(window),
                   alias=alias)
    if html is not None:
        from hone.errors import HoneError
        from hone.monitor.html import render_html
        from hone.monitor.traffic_drift import traffic_drift

        try:
            drift = traffic_drift(project, model, db_url=db, since=parse_since(since), alias=alias)
        except HoneError as error:
            console.print(f"drift left out of the HTML report: {error}")
            drift = None
        html.parent.mkdir(parents=True, exist_ok=True)
        html.write_text(render_html(found, drift), encoding="utf-8")
    if as_json:
        emit_json(_plain(found))
        return
    console.print(f"[bold]{found.model}[/bold] in {found.project}: {found.total.requests} requests, "
                  f"{found.since} to {found.until}")
    table = Table("window", "requests", "latency p50 ms", "p99 ms", "tokens/s p50", "refusal %", "truncated %",
                  "valid %", "rating", "corrected %", title=f"per window of {found.window_seconds} s")
    for w in [*found.windows, found.total]:
        if not w.requests:
            continue
        label = "whole period" if w is found.total else w.start[:16].replace("T", " ")
        table.add_row(label, str(w.requests), _shown(w.latency_ms.p50, w.latency_ms.needed),
                      _shown(w.latency_ms.p99, w.latency_ms.needed_p99),
                      _shown(w.tokens_per_second.p50, w.tokens_per_second.needed),
                      _shown(w.refusal.rate, w.refusal.needed, 100), _shown(w.truncated.rate, w.truncated.needed, 100),
                      _shown(w.format_valid.rate, w.format_valid.needed, 100) if w.format_valid else "-",
                      _shown(w.rating.mean, w.rating.needed), _shown(w.corrected.rate, w.corrected.needed, 100))
    console.print(table)
    for note in found.notes:
        console.print(f"note: {note}")
    if html is not None:
        console.print(f"wrote {html}")


@app.command("drift")
def drift(
    model: ModelArgument,
    project: ProjectOption = DEFAULT_PROJECT,
    since: SinceOption = None,
    window_size: Annotated[int | None, typer.Option(help="Requests per window (default: the calibrated 100).")] = None,
    alias: Annotated[str | None, typer.Option(help="The alias whose traffic to check when MODEL names none "
                                              "(default: champion).")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Drift of the traffic's prompts, reply lengths and format validity from the answering version's training
    data, per window, with the prompts most unlike the training data (PII masked at capture)."""
    from hone.monitor.report import parse_since
    from hone.monitor.traffic_drift import traffic_drift

    found = traffic_drift(project, model, db_url=db, since=parse_since(since), window_size=window_size, alias=alias)
    if as_json:
        emit_json(_plain(found))
        return
    for note in found.notes:
        console.print(f"note: {note}")
    for version in found.versions:
        console.print(f"[bold]{version.version}[/bold]: {version.requests} requests, reference "
                      f"{version.reference_size} training examples")
        if version.note:
            console.print(f"  {version.note}")
        for window in version.windows:
            if window.status != "ok":
                console.print(f"  window #{window.index}: {window.requests} requests, {window.needed} more needed")
                continue
            verdict = "[bold red]DRIFT[/bold red]" if window.drifted else "no drift"
            console.print(f"  window #{window.index} ({window.start[:16]} to {window.end[:16]}): {verdict}")
            for reason in (*window.prompt.reasons, window.reply_length.reason,
                           window.format_validity.reason if window.format_validity else None):
                if reason:
                    console.print(f"    {reason}")
            if window.drifted:
                for example in window.examples:
                    console.print(f"    - {example}")
