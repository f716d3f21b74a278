"""Write an evaluation report as JSON (everything) and as one self-contained HTML page (for people).

The HTML has no external assets: styles are inline and charts are inline SVG, so it reads offline.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from hone.data.render import render_tool_call
from hone.eval import charts
from hone.eval.metrics import METRIC_INFO, METRICS

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.35em 0.7em; text-align: right; vertical-align: top; }
th:first-child, td:first-child { text-align: left; }
.up { color: #17803d; } .down { color: #b3261e; }
.verdict { border: 2px solid #888; border-radius: 6px; padding: 0.6em 1em; margin: 1em 0; }
.SHIP { border-color: #17803d; } .REGRESSION { border-color: #b3261e; }
.warning { color: #8a5300; }
.example { border: 1px solid #ddd; border-radius: 6px; padding: 0.8em; margin-bottom: 1em; }
.columns { display: grid; grid-template-columns: repeat(auto-fit, minmax(250px, 1fr)); gap: 0.8em; }
pre { white-space: pre-wrap; word-break: break-word; background: #f6f6f6; padding: 0.5em; margin: 0.3em 0; }
.scores { font-size: 0.85em; color: #555; }
.chart { max-width: 900px; }
"""


def format_value(value: float | None) -> str:
    """A metric value for display: one decimal (three under 1), '-' when it does not apply."""
    if value is None:
        return "-"
    return f"{value:.3f}" if abs(value) < 1 and value != 0 else f"{value:.1f}"


def format_delta(result: dict | None) -> str:
    """'+37.5 [+27.5, +48.8] *' for a delta with its CI; '*' when the interval excludes zero."""
    if not result:
        return "-"
    return (f"{result['delta']:+.1f} [{result['ci_low']:+.1f}, {result['ci_high']:+.1f}]"
            + (" *" if result["excludes_zero"] else ""))


def shown_metrics(report: dict) -> list[str]:
    """The metrics that apply to at least one candidate, in the standard order."""
    return [m for m in METRICS if any(agg[m] is not None for agg in report["aggregates"].values())]


def value_rows(report: dict) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Header and (metric label, [value per candidate]) rows of the metrics table."""
    names = list(report["aggregates"])
    rows = [(METRIC_INFO[m][0], [format_value(report["aggregates"][n][m]) for n in names])
            for m in shown_metrics(report)]
    return ["metric", *names], rows


def delta_rows(report: dict) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Header and rows of the change-against-baseline table (delta and 95% CI per other candidate)."""
    others = list(report["comparisons"])
    rows = [(METRIC_INFO[m][0], [format_delta(report["comparisons"][n][m]) for n in others])
            for m in shown_metrics(report)]
    return [f"change vs {report['baseline']} (95% CI)", *others], rows


def _cell_class(metric: str, result: dict | None) -> str:
    direction = METRIC_INFO[metric][2]
    if not result or not direction or not result["excludes_zero"]:
        return ""
    return "up" if result["delta"] * direction > 0 else "down"


def _table(header: list[str], rows: list[tuple[str, list[str]]], classes: list[list[str]] | None = None) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = []
    for r, (label, cells) in enumerate(rows):
        tds = "".join(f'<td class="{classes[r][c] if classes else ""}">{escape(cell)}</td>'
                      for c, cell in enumerate(cells))
        body.append(f"<tr><td>{escape(label)}</td>{tds}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _metrics_section(report: dict) -> str:
    html = _table(*value_rows(report))
    if report["comparisons"]:
        header, rows = delta_rows(report)
        classes = [[_cell_class(m, report["comparisons"][n][m]) for n in report["comparisons"]]
                   for m in shown_metrics(report)]
        html += (_table(header, rows, classes) + "<p>95% CI: paired bootstrap over the test examples; * = the "
                 "interval excludes 0. Right/wrong metrics also get McNemar's test (report.json).</p>")
        labels = {m: METRIC_INFO[m][0] for m in METRICS}
        html += _chart(charts.delta_chart(report["comparisons"], shown_metrics(report), labels, report["baseline"]))
    return html


def _chart(svg: str) -> str:
    return f'<div class="chart">{svg}</div>' if svg else ""


def _verdict_section(verdict: dict) -> str:
    items = "".join(f"<li>{escape(r)}</li>" for r in verdict["reasons"])
    notes = "".join(f"<li>{escape(n)}</li>" for n in verdict["notes"])
    why = f' (primary metric: {verdict["primary_metric_reason"]})' if verdict.get("primary_metric_reason") else ""
    return (f'<div class="verdict {escape(verdict["decision"].replace(" ", "_"))}"><h2>Verdict: '
            f'{escape(verdict["decision"])}</h2><p>{escape(verdict["candidate"] or "-")} against '
            f'{escape(verdict["baseline"])} on {escape(verdict["primary_metric"])}{escape(why)}, threshold '
            f'{verdict["threshold"]:g} points</p><ul>{items}</ul>' + (f"<ul>{notes}</ul>" if notes else "") + "</div>")


def _classification_section(report: dict) -> str:
    found = report.get("classification")
    if not found:
        return ""
    rows = [(name, [format_value(c["accuracy"]), format_value(c["macro_f1"]), str(c["unlabelled_replies"])])
            for name, c in found.items()]
    html = "<h2>Classification</h2>" + _table(["candidate", "accuracy %", "macro-F1 %", "replies without a label"],
                                              rows)
    for name, summary in found.items():
        html += _chart(charts.confusion_chart(summary["labels"], summary["confusion"], f"{name}: confusion matrix"))
    return html


def _judge_section(judge: dict | None) -> str:
    if not judge:
        return ""
    html = f"<h2>LLM judge ({escape(judge['model'])})</h2><p>status: {escape(judge['status'])}"
    html += f" · {escape(judge['message'])}</p>" if judge.get("message") else "</p>"
    if judge.get("rubric"):
        rows = [(n, [format_value(r["mean"]), str(r["scored"]), str(r["failed"])]) for n, r in judge["rubric"].items()]
        html += _table(["rubric score 1-5", "mean", "scored", "failed"], rows)
    if judge.get("pairwise"):
        rows = [(n, [p["against"], str(p["wins"]), str(p["losses"]), str(p["ties"]), str(p["failed"]),
                     format_value(p["flip_rate"])]) for n, p in judge["pairwise"].items()]
        html += _table(["pairwise (both orders)", "against", "wins", "losses", "ties", "failed", "position-flip rate"],
                       rows)
    bias = judge.get("length_bias") or {}
    html += (f"<p>length bias: Spearman(length, rubric score) {format_value(bias.get('rubric_spearman'))} · "
             f"longer reply won {format_value(bias.get('longer_wins'))} of decided pairs</p>")
    return html


def _forgetting_section(forgetting: dict | None) -> str:
    if not forgetting:
        return ""
    measures = {"answer_match": "short answers right %", "token_f1": "token F1 %",
                "text_perplexity": "general-text perplexity"}
    models = forgetting["models"]
    rows = [(label, [format_value(models[n][key]) for n in models]) for key, label in measures.items()]
    html = (f"<h2>Forgetting: {forgetting['probes']} general probes, {forgetting['text_tokens']} tokens of general "
            "text</h2>" + _table(["measure", *models], rows))
    changes = [(n, [format_delta(c["answer_match"]), format_delta(c["token_f1"]),
                    format_value(c["text_perplexity_rise_pct"])]) for n, c in forgetting["changes"].items()]
    html += _table(["change vs base", "short answers", "token F1", "perplexity rise %"], changes)
    chart_scores = {n: {measures[k]: models[n][k] for k in ("answer_match", "token_f1")} for n in models}
    return html + _chart(charts.forgetting_chart(chart_scores, "General probe scores")) + _probe_replies(forgetting)


def _probe_replies(forgetting: dict) -> str:
    rows = "".join(
        f"<tr><td>{escape(e['category'])}</td><td>{escape(e['prompt'][-1]['content'])}</td>"
        f"<td>{escape(e['reference'])}</td>" + "".join(f"<td>{escape(r)}</td>" for r in e["replies"].values())
        + "</tr>" for e in forgetting["examples"])
    head = "".join(f"<th>{escape(name)}</th>" for name in forgetting["models"])
    return (f"<details><summary>every probe and reply</summary><table><thead><tr><th>category</th><th>probe</th>"
            f"<th>reference</th>{head}</tr></thead><tbody>{rows}</tbody></table></details>")


def _interval(value: dict | None) -> str:
    """'71.2 [60.1, 80.3]' for a mean with its CI, '-' when it does not apply."""
    if not value or value.get("mean") is None:
        return "-"
    return f"{format_value(value['mean'])} [{format_value(value['ci_low'])}, {format_value(value['ci_high'])}]"


def _gap_text(gap: dict | None) -> str:
    if not gap:
        return "- (no two slices with enough examples)"
    return f"{gap['gap']:.1f} points ({gap['field']}: {gap['low']} vs {gap['high']})"


def _slices_section(slices: dict | None) -> str:
    if not slices:
        return ""
    metric, least = slices["metric"], slices["min_examples"]
    label = METRIC_INFO[metric][0] if metric in METRIC_INFO else metric
    names = list(slices["max_gap"])
    rows = [(f"{g['field']} = {g['value']}", [str(g["n"]) + ("" if g["n"] >= least else " (too few)")]
             + [_interval(g["candidates"][n].get(metric)) for n in names]) for g in slices["groups"]]
    html = (f"<h2>Slices by {escape(', '.join(slices['fields']))}</h2>"
            + _table(["slice", "examples", *[f"{n}: {label} (95% CI)" for n in names]], rows)
            + _table(["candidate", f"largest gap in {label}"], [(n, [_gap_text(slices["max_gap"][n])]) for n in names])
            + f"<p>Slices with fewer than {least} examples are shown but left out of the largest gap. Every other "
              "metric per slice, with its CI, is in report.json.</p>")
    return html + _chart(charts.slice_chart(slices["groups"], metric, label, f"{label} by slice (95% CI)"))


def _memorization_section(memorization: dict | None) -> str:
    if not memorization:
        return ""
    rows = [(n, [format_value(m["rate"]), f"[{format_value(m['ci_low'])}, {format_value(m['ci_high'])}]",
                 str(m["replies"]), " | ".join(f"#{e['index'] + 1}: {e['run']}" for e in m["examples"]) or "-"])
            for n, m in memorization["candidates"].items()]
    html = (f"<h2>Memorization: replies copying {memorization['ngram']}+ words of the training data</h2>"
            + _table(["candidate", "replies with a verbatim run %", "95% CI", "replies", "runs found"], rows)
            + "<p>Words are compared lowercased; runs that are also in the prompt do not count.</p>")
    canaries = memorization["canaries"]
    if canaries["planted"]:
        html += _table([f"canaries ({canaries['planted']} planted)", "leaked"],
                       [(n, [str(count)]) for n, count in canaries["leaked"].items()])
    return html


def _cost_section(report: dict) -> str:
    timings = report["timings"]
    rows = [(n, [format_value(timings[n]["prompt_tokens_mean"]), format_value(timings[n]["latency_s_mean"]),
                 format_value(timings[n]["tokens_per_s"]), format_value(timings[n]["seconds"])])
            for n in report["aggregates"]]
    html = "<h2>Cost per request</h2>" + _table(
        ["candidate", "prompt tokens (mean)", "latency s (mean)", "tokens/s", "total s"], rows)
    html += ("<p>Latency is the wall time of the batch a reply was generated in (batch_size "
             f"{report['config']['batch_size']}); set batch_size: 1 to measure single-request latency.</p>")
    lengths = {n: [e["outputs"][n]["tokens"] for e in report["examples"] if e["outputs"][n]["tokens"] is not None]
               for n in report["aggregates"]}
    return html + _chart(charts.length_chart(lengths, None))


def _scores_line(scores: dict) -> str:
    parts = [f"{METRIC_INFO[m][1]} {scores[m]:g}" for m in METRICS if scores.get(m) is not None]
    return escape(" · ".join(parts))


def _conversation(messages: list[dict]) -> str:
    return "\n\n".join(f"[{m['role']}] " + "\n".join(([m["content"]] if m["content"] else [])
                                                    + [render_tool_call(c) for c in m.get("tool_calls") or []])
                       for m in messages)


def _example_html(example: dict) -> str:
    columns = [f"<div><b>reference</b><pre>{escape(example['reference'])}</pre></div>"]
    for name, reply in example["outputs"].items():
        added = (f"<details><summary>prompt as sent</summary><pre>{escape(_conversation(reply['prompt']))}</pre>"
                 "</details>" if "prompt" in reply else "")
        text = "(no reply)" if reply["text"] is None else reply["text"]
        columns.append(f"<div><b>{escape(name)}</b><pre>{escape(text)}</pre>"
                       f"<div class=\"scores\">{_scores_line(reply['scores'])}</div>{added}</div>")
    return (f"<div class=\"example\"><b>example {example['index'] + 1}</b>"
            f"<pre>{escape(_conversation(example['prompt']))}</pre>"
            f"<div class=\"columns\">{''.join(columns)}</div></div>")


def render_html(report: dict) -> str:
    """The report as one HTML page: verdict, metrics with CIs and charts, classification, judge, forgetting,
    slices, memorization, cost, then every example side by side."""
    config = report["config"]
    facts = (f"data: {config['data']} · examples: {config['examples']} · max new tokens: "
             f"{config['max_new_tokens']} · base: {config['base']} · candidates: "
             + ", ".join(f"{c['name']} ({c['kind']})" for c in report["candidates"]))
    warnings = "".join(f'<p class="warning">warning: {escape(w)}</p>' for w in report["warnings"])
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>hone eval report</title>"
        f"<style>{STYLE}</style></head><body><h1>hone eval report</h1><p>{escape(facts)}</p>{warnings}"
        + _verdict_section(report["verdict"]) + "<h2>Metrics</h2>" + _metrics_section(report)
        + _classification_section(report) + _judge_section(report["judge"])
        + _forgetting_section(report["forgetting"]) + _slices_section(report.get("slices"))
        + _memorization_section(report.get("memorization")) + _cost_section(report) + "<h2>Examples</h2>"
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
