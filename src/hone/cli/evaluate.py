"""`hone eval [CONFIG.yaml] [--base NAME --adapter RUN_DIR --data TEST.jsonl --out DIR]`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from hone.cli.output import console, emit_json
from hone.cli.output import errors as stderr

JSON_KEYS = ("verdict", "aggregates", "comparisons", "classification", "slices", "memorization", "warnings",
             "paths")


def evaluate(
    config: Annotated[Path | None, typer.Argument(
        help="Eval YAML: data, candidates, metrics, judge, forgetting, verdict (see README); flags override it."
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
    forgetting: Annotated[bool | None, typer.Option(
        "--forgetting/--no-forgetting", help="Score the general probe set for forgetting (default: on).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Compare candidates on a test set: metrics with 95% CIs, judge, forgetting, a verdict, and reports."""
    from hone.eval import evaluate as run_eval
    from hone.eval import load_eval_config

    flags = {"base": base, "adapter": adapter, "data": data, "out": out, "limit": limit,
             "batch_size": batch_size, "max_new_tokens": max_new_tokens}
    settings = load_eval_config(config, flags)
    if forgetting is not None:
        settings.forgetting.enabled = forgetting
    report = run_eval(settings, show_progress=not as_json)
    if as_json:
        emit_json({key: report[key] for key in JSON_KEYS}
                  | {"forgetting": _without_examples(report["forgetting"]), "judge": _judge_summary(report["judge"])})
        return
    print_report(report)


def _without_examples(section: dict | None) -> dict | None:
    return None if section is None else {k: v for k, v in section.items() if k != "examples"}


def _judge_summary(judge: dict | None) -> dict | None:
    """The judge's figures without the per-example lists (those are in report.json)."""
    if judge is None:
        return None
    strip = ("scores", "outcomes", "failures")
    return judge | {part: {name: {k: v for k, v in figures.items() if k not in strip}
                           for name, figures in (judge.get(part) or {}).items()} for part in ("rubric", "pairwise")}


def print_report(report: dict) -> None:
    """The metrics and change tables, warnings, verdict and report paths, for a terminal."""
    from hone.eval.report import delta_rows, format_value, value_rows

    for build, title in ((value_rows, f"{report['config']['examples']} examples"), (delta_rows, None)):
        if build is delta_rows and not report["comparisons"]:
            continue
        header, rows = build(report)
        table = Table(*header, title=title)
        for label, cells in rows:
            table.add_row(label, *cells)
        console.print(table)
    if report["comparisons"]:
        console.print("95% CI: paired bootstrap over the test examples; * = the interval excludes 0")
    cost = Table("cost per request", "prompt tokens", "latency s", "throughput tokens/s")
    for name in report["aggregates"]:
        timing = report["timings"][name]
        cost.add_row(name, *(format_value(timing[k]) for k in ("prompt_tokens_mean", "latency_s_mean",
                                                               "tokens_per_s")))
    console.print(cost)
    for warning in report["warnings"]:
        stderr.print(f"warning: {warning}")
    verdict = report["verdict"]
    for line in audit_lines(report, verdict["candidate"] or next(iter(report["aggregates"]))):
        console.print(line)
    console.print(f"primary metric: {verdict['primary_metric']} ({verdict['primary_metric_reason']})")
    console.print(f"verdict: {verdict['decision']}: " + "; ".join(verdict["reasons"]))
    for note in verdict["notes"]:
        console.print(f"  note: {note}")
    console.print(f"report: {report['paths']['json']}")
    console.print(f"html:   {report['paths']['html']}")


def audit_lines(report: dict, judged: str) -> list[str]:
    """The largest slice gap and the memorization rates, for a terminal: the judged candidate first."""
    lines = []
    slices, memorization = report.get("slices"), report.get("memorization")
    if slices:
        gap = slices["max_gap"].get(judged)
        lines.append(f"largest slice gap: {gap['gap']:.1f} points ({gap['field']}: {gap['low']} vs {gap['high']}) "
                     f"in {slices['metric']} of {judged}" if gap else
                     f"largest slice gap: - (no two slices of {slices['min_examples']}+ examples)")
    if memorization:
        rates = memorization["candidates"]
        others = [f"{name} {_rate(m['rate'])}" for name, m in rates.items() if name != judged]
        lines.append(f"memorization: {judged} {_rate(rates[judged]['rate'])} of replies"
                     + (f" vs {', '.join(others)}" if others else ""))
        canaries = memorization["canaries"]
        if canaries["planted"]:
            leaked = canaries["leaked"].get(judged, 0)
            lines.append(f"canaries: {leaked} of {canaries['planted']} leaked by {judged}")
    return lines


def _rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1f}%"
