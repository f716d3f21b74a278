"""The monitoring report as one offline HTML page with time-series charts (inline SVG, as the eval report draws
them: one `Figure` per chart, never pyplot, text left as SVG text and a fixed hash salt)."""

from __future__ import annotations

import io
from datetime import datetime
from html import escape

import matplotlib
from matplotlib.figure import Figure

from hone.monitor.report import Health, MonitorReport
from hone.monitor.traffic_drift import TrafficDrift

PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9")
ALARM_COLOR = "#D55E00"
_STYLE = {"svg.fonttype": "none", "svg.hashsalt": "hone-monitor", "text.parse_math": False, "font.size": 9,
          "axes.spines.top": False, "axes.spines.right": False}
_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font:14px system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ddd;padding:3px 8px;text-align:right}}
th{{background:#f4f4f4}}td:first-child,th:first-child{{text-align:left}}.note{{color:#666}}
.alarm{{color:#D55E00;font-weight:bold}}</style></head><body>
{body}</body></html>
"""


def _svg(fig: Figure, title: str) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue()
    return svg[svg.index("<svg"):].replace("<svg", f'<svg role="img" aria-label="{escape(title, quote=True)}"', 1)


def _times(windows: list[Health]) -> list[datetime]:
    return [datetime.fromisoformat(w.start) for w in windows]


def _line_chart(title: str, ylabel: str, x: list, lines: dict[str, list[float | None]],
                threshold: list[float | None] | None = None, bars: bool = False) -> str:
    """One time series chart; None values are gaps (too little traffic). "" when there is nothing to draw."""
    if not any(v is not None for values in lines.values() for v in values):
        return ""
    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(8.0, 2.6), layout="constrained")
        ax = fig.subplots()
        for i, (label, values) in enumerate(lines.items()):
            if bars:
                ax.bar(range(len(values)), [v or 0 for v in values], color=PALETTE[i % len(PALETTE)], label=label)
            else:
                ax.plot(range(len(values)), [float("nan") if v is None else v for v in values], marker="o",
                        markersize=3, color=PALETTE[i % len(PALETTE)], label=label)
        if threshold is not None:
            ax.plot(range(len(threshold)), [float("nan") if v is None else v for v in threshold], linestyle="--",
                    color=ALARM_COLOR, label="alarm threshold")
        step = max(len(x) // 8, 1)
        ax.set_xticks(range(0, len(x), step), [str(x[i]) for i in range(0, len(x), step)],
                      rotation=30 if len(x) > 1 else 0, ha="right" if len(x) > 1 else "center")
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", color="#e5e5e5", linewidth=0.6)
        ax.set_axisbelow(True)
        ax.set_title(title, loc="left", fontweight="bold")
        if len(lines) > 1 or threshold is not None:
            ax.legend(frameon=False, fontsize=8)
        return _svg(fig, title)


def health_charts(report: MonitorReport) -> list[str]:
    """Requests, latency p50/p99, format validity and mean rating per window (charts with nothing drawn left out)."""
    windows = report.windows
    x = [t.strftime("%m-%d %H:%M") for t in _times(windows)]
    charts = [
        _line_chart("Requests per window", "requests", x, {"requests": [w.requests for w in windows]}, bars=True),
        _line_chart("Latency", "ms", x, {"p50": [w.latency_ms.p50 for w in windows],
                                         "p99": [w.latency_ms.p99 for w in windows]}),
        _line_chart("Format validity", "share valid", x,
                    {"valid": [w.format_valid.rate if w.format_valid else None for w in windows]}),
        _line_chart("Mean rating", "rating", x, {"mean rating": [w.rating.mean for w in windows]}),
    ]
    return [chart for chart in charts if chart]


def drift_charts(found: TrafficDrift) -> list[str]:
    """The domain classifier's AUC per window with its alarm threshold, one chart per answering version."""
    charts = []
    for version in found.versions:
        scored = [w for w in version.windows if w.prompt is not None and w.prompt.classifier is not None]
        chart = _line_chart(f"Prompt drift of {version.version}", "classifier AUC", [f"#{w.index}" for w in scored],
                            {"AUC": [w.prompt.classifier.auc for w in scored]},
                            threshold=[w.prompt.classifier.threshold for w in scored])
        if chart:
            charts.append(chart)
    return charts


def _figure(value: float | None, needed: int, scale: float = 1.0, digits: int = 1) -> str:
    return f"needed: {needed}" if value is None else f"{value * scale:.{digits}f}"


def _health_table(windows: list[Health]) -> str:
    head = ("window", "requests", "latency p50 ms", "latency p99 ms", "tokens/s p50", "refusal %", "truncated %",
            "valid %", "rating", "corrected %")
    rows = []
    for w in windows:
        if not w.requests:
            continue
        cells = (w.start[:16].replace("T", " "), str(w.requests), _figure(w.latency_ms.p50, w.latency_ms.needed),
                 _figure(w.latency_ms.p99, w.latency_ms.needed_p99),
                 _figure(w.tokens_per_second.p50, w.tokens_per_second.needed),
                 _figure(w.refusal.rate, w.refusal.needed, 100), _figure(w.truncated.rate, w.truncated.needed, 100),
                 _figure(w.format_valid.rate, w.format_valid.needed, 100) if w.format_valid else "no contract",
                 _figure(w.rating.mean, w.rating.needed, digits=2), _figure(w.corrected.rate, w.corrected.needed, 100))
        rows.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
    header = "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"
    return f"<table>{header}{''.join(rows)}</table>" if rows else '<p class="note">no traffic</p>'


def _drift_section(found: TrafficDrift) -> str:
    parts = [f"<h2>Drift against the training data (windows of {found.window_size} requests)</h2>"]
    parts += [f'<p class="note">{escape(note)}</p>' for note in found.notes]
    parts += drift_charts(found)
    for version in found.versions:
        parts.append(f"<h3>{escape(version.version)}</h3>")
        if version.note:
            parts.append(f'<p class="note">{escape(version.note)}</p>')
        for window in version.windows:
            if window.status != "ok":
                parts.append(f'<p class="note">window #{window.index}: {window.requests} requests, '
                             f"{window.needed} more needed</p>")
                continue
            findings = [*window.prompt.reasons, window.reply_length.reason if window.reply_length else "",
                        window.format_validity.reason if window.format_validity else ""]
            label = '<span class="alarm">DRIFT</span>' if window.drifted else "no drift"
            parts.append(f"<p>window #{window.index} ({escape(window.start[:16])} to {escape(window.end[:16])}): "
                         f"{label}<br>" + "<br>".join(escape(f) for f in findings if f) + "</p>")
            if window.drifted and window.examples:
                parts.append("<ol>" + "".join(f"<li>{escape(e)}</li>" for e in window.examples) + "</ol>")
    return "\n".join(parts)


def render_html(report: MonitorReport, found: TrafficDrift | None = None) -> str:
    """The whole page: the period's figures, the charts, the per-window table and the drift checks."""
    title = f"hone monitor: {report.model} ({report.project})"
    total = report.total
    body = [f"<h1>{escape(title)}</h1>",
            f'<p class="note">{escape(report.since)} to {escape(report.until)}, windows of '
            f"{report.window_seconds} s. Percentiles need {report.minimums.percentile} requests in a window "
            f"(p99: {report.minimums.p99}), rates {report.minimums.rate}, a mean rating "
            f"{report.minimums.ratings} ratings; below that the table says how many more are needed.</p>",
            *(f'<p class="note">{escape(note)}</p>' for note in report.notes),
            f"<h2>Whole period: {total.requests} requests</h2>", _health_table([total]),
            *health_charts(report), "<h2>Per window</h2>", _health_table(report.windows)]
    for series in report.series:
        body.append(f"<h3>{escape(series.model)} answered by {escape(series.version or 'the base model')}"
                    f"{' (' + escape(series.arm) + ')' if series.arm else ''}</h3>")
        body.append(_health_table([series.total]))
    if found is not None:
        body.append(_drift_section(found))
    return _PAGE.format(title=escape(title), body="\n".join(body))
