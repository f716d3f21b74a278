"""Write an evaluation report as JSON (everything) and as one self-contained HTML page (for people)."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from hone.eval.metrics import METRICS, PERCENT_METRICS

MODEL_LABELS = {"base": "base", "finetuned": "fine-tuned"}
METRIC_LABELS = {"exact_match": "exact match %", "token_f1": "token F1 %", "rouge_l": "ROUGE-L F %",
                 "bleu": "BLEU", "chrf": "chrF",
                 "json_valid": "valid JSON %", "json_fields": "JSON fields correct %",
                 "output_tokens": "output tokens (mean)"}
SHORT_LABELS = {"exact_match": "EM", "token_f1": "F1", "rouge_l": "ROUGE-L", "bleu": "BLEU", "chrf": "chrF",
                "json_valid": "valid JSON", "json_fields": "fields", "output_tokens": "tokens"}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.35em 0.7em; text-align: right; vertical-align: top; }
th:first-child, td:first-child { text-align: left; }
.up { color: #17803d; } .down { color: #b3261e; }
.example { border: 1px solid #ddd; border-radius: 6px; padding: 0.8em; margin-bottom: 1em; }
.columns { display: grid; grid-template-columns: repeat(auto-fit, minmax(250px, 1fr)); gap: 0.8em; }
pre { white-space: pre-wrap; word-break: break-word; background: #f6f6f6; padding: 0.5em; margin: 0.3em 0; }
.scores { font-size: 0.85em; color: #555; }
"""


def format_value(value: float | None) -> str:
    """A metric value for display: one decimal, '-' when it does not apply."""
    return "-" if value is None else f"{value:.1f}"


def format_delta(value: float | None) -> str:
    """A signed difference for display: '+3.2', '-1.0', '-' when it does not apply."""
    return "-" if value is None else f"{value:+.1f}"


def format_interval(result: dict | None) -> str:
    """'[+26.2, +48.8]' for a delta's confidence interval, with '*' when it excludes zero."""
    if not result:
        return "-"
    return f"[{result['ci_low']:+.1f}, {result['ci_high']:+.1f}]" + (" *" if result["excludes_zero"] else "")


def metric_rows(report: dict) -> list[tuple[str, list[str]]]:
    """(metric label, [base, fine-tuned?, delta?]) rows of the aggregates table, formatted for display."""
    rows = []
    for metric in METRICS:
        cells = [format_value(report["aggregates"][key][metric]) for key in report["aggregates"]]
        if report["deltas"] is not None:
            cells.append(format_delta(report["deltas"][metric]))
            cells.append(format_interval((report.get("significance") or {}).get(metric)))
        rows.append((METRIC_LABELS[metric], cells))
    return rows


def table_header(report: dict) -> list[str]:
    """Column names of the aggregates table: metric, each evaluated model, and delta when there are two."""
    return ["metric", *(MODEL_LABELS[key] for key in report["aggregates"])] + (
        ["delta", "95% CI"] if report["deltas"] is not None else [])


def _delta_class(metric: str, value: float | None) -> str:
    if value is None or value == 0 or metric not in PERCENT_METRICS:
        return ""
    return "up" if value > 0 else "down"


def _metrics_table(report: dict) -> str:
    head = "".join(f"<th>{escape(name)}</th>" for name in table_header(report))
    body = []
    for metric, (label, cells) in zip(METRICS, metric_rows(report), strict=True):
        tds = [f"<td>{escape(cell)}</td>" for cell in cells]
        if report["deltas"] is not None:
            tds[-2] = f'<td class="{_delta_class(metric, report["deltas"][metric])}">{escape(cells[-2])}</td>'
        body.append(f"<tr><td>{escape(label)}</td>{''.join(tds)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _scores_line(scores: dict) -> str:
    parts = [f"{SHORT_LABELS[m]} {scores[m]:g}" for m in METRICS if scores[m] is not None]
    return escape(" · ".join(parts))


def _timings_line(report: dict) -> str:
    parts = [f"loading {report['timings']['load_s']:.1f} s"]
    for key in report["aggregates"]:
        seconds, speed = report["timings"][key]["seconds"], report["timings"][key]["tokens_per_s"] or 0
        parts.append(f"{MODEL_LABELS[key]} {seconds:.1f} s ({speed:.1f} tokens/s)")
    return escape("time: " + " · ".join(parts))


def _example_html(example: dict) -> str:
    prompt = "\n\n".join(f"[{m['role']}] {m['content']}" for m in example["prompt"])
    columns = [f"<div><b>reference</b><pre>{escape(example['reference'])}</pre></div>"]
    for key, reply in example["outputs"].items():
        columns.append(f"<div><b>{escape(MODEL_LABELS[key])}</b><pre>{escape(reply['text'])}</pre>"
                       f"<div class=\"scores\">{_scores_line(reply['scores'])}</div></div>")
    return (f"<div class=\"example\"><b>example {example['index'] + 1}</b><pre>{escape(prompt)}</pre>"
            f"<div class=\"columns\">{''.join(columns)}</div></div>")


def render_html(report: dict) -> str:
    """The report as one HTML page with no external assets: metrics table, then every example side by side."""
    config = report["config"]
    facts = (f"data: {config['data']} · examples: {config['examples']} · max new tokens: "
             f"{config['max_new_tokens']} · base: {config['base']}"
             + (f" · adapter: {config['adapter']}" if config.get("adapter") else ""))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>hone eval report</title>"
        f"<style>{STYLE}</style></head><body><h1>hone eval report</h1><p>{escape(facts)}</p>"
        f"<p>{_timings_line(report)}</p>"
        f"<h2>Metrics</h2>{_metrics_table(report)}<h2>Examples</h2>"
        + "".join(_example_html(example) for example in report["examples"])
        + "</body></html>\n"
    )


def write_report(report: dict, out: Path) -> dict[str, Path]:
    """Write OUT/report.json and OUT/report.html (creating OUT); returns both paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "html": out / "report.html"}
    paths["json"].write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    paths["html"].write_text(render_html(report), encoding="utf-8")
    return paths
