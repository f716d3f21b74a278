"""Charts for the evaluation report, as inline SVG strings that work offline inside report.html.

Every chart is drawn on its own `matplotlib.figure.Figure` (never pyplot, so nothing is kept between calls),
with text left as SVG text and a fixed hash salt so the same data always gives the same bytes.
Each function returns "" when there is nothing to draw.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable
from functools import wraps
from html import escape

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
REFERENCE_COLOR = "#999999"
NONE_LABEL = "(none)"
_STYLE = {
    "svg.fonttype": "none",
    "svg.hashsalt": "hone-eval",
    # Candidate names and labels are user text: a "$" must not switch to mathtext.
    "text.parse_math": False,
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
_SVG_SIZE = re.compile(r'<svg([^>]*?) width="([\d.]+)pt" height="[\d.]+pt"')


def _chart_style(draw: Callable[..., str]) -> Callable[..., str]:
    """Run a chart function under the house rcParams, restoring the caller's settings afterwards."""

    @wraps(draw)
    def styled(*args, **kwargs) -> str:
        with matplotlib.rc_context(_STYLE):
            return draw(*args, **kwargs)

    return styled


def _color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _to_svg(fig: Figure, title: str) -> str:
    """The figure as an embeddable <svg> element: no XML prolog, full width up to its natural size."""
    buffer = io.StringIO()
    # A fixed (absent) date keeps the output byte-identical between runs.
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    fig.clear()
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]
    label = escape(title, quote=True)
    return _SVG_SIZE.sub(
        rf'<svg\1 width="100%" style="max-width: \2pt; height: auto" role="img" aria-label="{label}"', svg, count=1)


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _usable(comparison: dict | None) -> bool:
    return comparison is not None and all(_finite(comparison.get(key)) for key in ("delta", "ci_low", "ci_high"))


def _draw_metric_deltas(ax: Axes, candidates: list[str], row: list[dict | None], label: str) -> None:
    """One metric's panel: a point per candidate with its CI as a horizontal bar, filled when it excludes 0."""
    for position, (candidate, comparison) in enumerate(zip(candidates, row, strict=True)):
        if not _usable(comparison):
            continue
        color = _color(position)
        delta = comparison["delta"]
        error = [[max(delta - comparison["ci_low"], 0.0)], [max(comparison["ci_high"] - delta, 0.0)]]
        face = color if comparison.get("excludes_zero") else "white"
        ax.errorbar([delta], [position], xerr=error, fmt="o", color=color, markerfacecolor=face,
                    markeredgecolor=color, markersize=7, capsize=3, elinewidth=1.5, label=candidate)
    ax.axvline(0, color="black", linewidth=0.9, zorder=0)
    ax.set_yticks(range(len(candidates)), candidates)
    ax.set_ylim(len(candidates) - 0.5, -0.5)
    ax.set_title(label, loc="left", fontsize=9, fontweight="bold")
    ax.grid(axis="x", color="#e5e5e5", linewidth=0.6)
    ax.set_axisbelow(True)


def _delta_legend(candidates: list[str]) -> list[Line2D]:
    """Legend entries: one colour per candidate, then what filled and hollow markers mean."""
    handles = [Line2D([], [], marker="o", linestyle="-", color=_color(i), label=name)
               for i, name in enumerate(candidates)]
    handles.append(Line2D([], [], marker="o", linestyle="", color="#555555", label="CI excludes 0"))
    handles.append(Line2D([], [], marker="o", linestyle="", color="#555555", markerfacecolor="white",
                          label="CI includes 0"))
    return handles


@_chart_style
def delta_chart(comparisons: dict[str, dict[str, dict | None]], metrics: list[str],
                metric_labels: dict[str, str], baseline: str) -> str:
    """Each candidate's change against the baseline per metric, with its 95% CI; one panel per metric.

    `comparisons[candidate][metric]` is None or a dict with delta, ci_low, ci_high and excludes_zero.
    Panels have their own x scale because metrics differ in units (percent points, tokens).
    """
    candidates = [name for name in comparisons if name != baseline]
    rows = {metric: [comparisons[name].get(metric) for name in candidates] for metric in metrics}
    drawn = [metric for metric, row in rows.items() if any(_usable(comparison) for comparison in row)]
    if not drawn:
        return ""
    panel_height = 0.28 * len(candidates) + 0.55
    fig = Figure(figsize=(7.0, panel_height * len(drawn) + 1.0), layout="constrained")
    axes = fig.subplots(len(drawn), 1, squeeze=False)[:, 0]
    for ax, metric in zip(axes, drawn, strict=True):
        _draw_metric_deltas(ax, candidates, rows[metric], metric_labels.get(metric, metric))
    axes[-1].set_xlabel(f"difference from {baseline}")
    title = f"Change against {baseline} (95% CI)"
    fig.suptitle(title, fontweight="bold")
    fig.legend(handles=_delta_legend(candidates), loc="outside lower center", ncol=min(len(candidates) + 2, 6),
               frameon=False)
    return _to_svg(fig, title)


def _write_counts(ax: Axes, matrix: list[list[int]], peak: int) -> None:
    """Write each count in its cell, white on dark cells so it stays legible."""
    for row, counts in enumerate(matrix):
        for column, count in enumerate(counts):
            color = "white" if count > peak / 2 else "black"
            ax.text(column + 0.5, row + 0.5, str(count), ha="center", va="center", color=color, fontsize=8)


@_chart_style
def confusion_chart(labels: list[str], matrix: list[list[int]], title: str) -> str:
    """Heatmap of reference label (rows) against predicted label (columns) with the count in every cell.

    A row may have one extra last entry, counted under "(none)": outputs in which no label was found.
    """
    if not labels or not matrix or not any(any(row) for row in matrix):
        return ""
    width = len(matrix[0])
    if len(matrix) != len(labels) or width not in (len(labels), len(labels) + 1) or any(
            len(row) != width for row in matrix):
        raise ValueError(f"confusion matrix must be {len(labels)} rows of {len(labels)} or {len(labels) + 1} counts")
    predicted = labels + [NONE_LABEL] if width > len(labels) else labels
    peak = max(max(row) for row in matrix)
    side = min(2.5 + 0.45 * len(predicted), 9.0)
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    ax = fig.subplots()
    # pcolormesh keeps the cells as vector shapes, where imshow would embed a bitmap.
    mesh = ax.pcolormesh(matrix, cmap="Blues", vmin=0, vmax=peak, edgecolors="white", linewidth=0.5)
    ax.set_xlim(0, width)
    ax.set_ylim(len(labels), 0)
    ax.set_xticks([i + 0.5 for i in range(width)], predicted, rotation=45 if width > 4 else 0,
                  ha="right" if width > 4 else "center")
    ax.set_yticks([i + 0.5 for i in range(len(labels))], labels)
    if width > len(labels):
        # Set the "(none)" column apart: it is a failure to answer, not a wrong label.
        ax.axvline(len(labels), color="#555555", linewidth=1.5)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    ax.set_aspect("equal")
    ax.spines[:].set_visible(False)
    ax.tick_params(length=0)
    _write_counts(ax, matrix, peak)
    ax.set_title(title, fontweight="bold")
    fig.colorbar(mesh, ax=ax, shrink=0.7, label="examples")
    return _to_svg(fig, title)


@_chart_style
def length_chart(lengths: dict[str, list[int]], reference: list[int] | None,
                 title: str = "Reply length (tokens)") -> str:
    """Box plots of reply length per candidate, plus the references' lengths (grey) when given.

    Returns "" when no candidate has any reply, since the references alone compare nothing.
    """
    series = [(name, values, _color(i)) for i, (name, values) in enumerate(lengths.items()) if values]
    if not series:
        return ""
    if reference:
        series.append(("reference", reference, REFERENCE_COLOR))
    fig = Figure(figsize=(max(4.0, 1.1 * len(series) + 2.0), 3.6), layout="constrained")
    ax = fig.subplots()
    positions = list(range(1, len(series) + 1))
    boxes = ax.boxplot([values for _, values, _ in series], positions=positions, patch_artist=True, widths=0.55,
                       medianprops={"color": "black"}, flierprops={"markersize": 3, "markeredgecolor": "#555555"})
    for box, (_, _, color) in zip(boxes["boxes"], series, strict=True):
        box.set_facecolor(color)
        box.set_alpha(0.75)
    ax.set_xticks(positions, [f"{name}\nn={len(values)}" for name, values, _ in series])
    ax.set_ylabel("tokens")
    ax.set_ylim(bottom=0)
    ax.grid(axis="y", color="#e5e5e5", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.set_title(title, fontweight="bold")
    return _to_svg(fig, title)


def _measures(scores: dict[str, dict[str, float | None]]) -> list[str]:
    """Every measure with at least one score, in the order they first appear."""
    seen: dict[str, None] = {}
    for by_measure in scores.values():
        seen.update({measure: None for measure, value in by_measure.items() if _finite(value)})
    return list(seen)


@_chart_style
def forgetting_chart(scores: dict[str, dict[str, float | None]], title: str) -> str:
    """Grouped bars of each model's score per measure (e.g. general-skill checks before and after tuning)."""
    measures = _measures(scores)
    if not measures:
        return ""
    models = list(scores)
    width = 0.8 / len(models)
    fig = Figure(figsize=(max(4.5, 1.0 + len(measures) * (0.5 + 0.35 * len(models))), 3.8), layout="constrained")
    ax = fig.subplots()
    for i, model in enumerate(models):
        points = [(m, scores[model].get(measure)) for m, measure in enumerate(measures)]
        points = [(m, value) for m, value in points if _finite(value)]
        if not points:
            continue
        offsets = [m - 0.4 + width * (i + 0.5) for m, _ in points]
        bars = ax.bar(offsets, [value for _, value in points], width=width * 0.92, color=_color(i), label=model)
        ax.bar_label(bars, fmt="{:.1f}", fontsize=7, padding=2)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(measures)), measures)
    ax.set_ylabel("score")
    ax.margins(y=0.12)
    ax.grid(axis="y", color="#e5e5e5", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.set_title(title, fontweight="bold")
    fig.legend(loc="outside lower center", ncol=min(len(models), 6), frameon=False)
    return _to_svg(fig, title)


@_chart_style
def slice_chart(groups: list[dict], metric: str, metric_label: str, title: str) -> str:
    """Each slice's mean of `metric` per candidate with its 95% CI, one row per slice ("field = value (n)").

    `groups` are the report's slice groups: field, value, n and candidates[name][metric] with mean, ci_low and
    ci_high. Candidates are offset within a row so their intervals do not overlap.
    """
    rows = [g for g in groups if any(_usable_mean(c.get(metric)) for c in g["candidates"].values())]
    if not rows:
        return ""
    candidates = list(rows[0]["candidates"])
    step = 0.7 / max(len(candidates), 1)
    fig = Figure(figsize=(7.0, 0.35 * len(rows) * max(1, len(candidates) ** 0.5) + 1.4), layout="constrained")
    ax = fig.subplots()
    for c, name in enumerate(candidates):
        points = [(r, g["candidates"][name][metric]) for r, g in enumerate(rows)
                  if _usable_mean(g["candidates"][name].get(metric))]
        if not points:
            continue
        offsets = [r - 0.35 + step * (c + 0.5) for r, _ in points]
        means = [p["mean"] for _, p in points]
        error = [[max(p["mean"] - p["ci_low"], 0.0) for _, p in points],
                 [max(p["ci_high"] - p["mean"], 0.0) for _, p in points]]
        ax.errorbar(means, offsets, xerr=error, fmt="o", color=_color(c), markersize=5, capsize=2.5,
                    elinewidth=1.3, label=name)
    ax.set_yticks(range(len(rows)), [f"{g['field']} = {g['value']} (n={g['n']})" for g in rows])
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlabel(metric_label)
    ax.grid(axis="x", color="#e5e5e5", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.set_title(title, fontweight="bold")
    fig.legend(loc="outside lower center", ncol=min(len(candidates), 6), frameon=False)
    return _to_svg(fig, title)


def _usable_mean(value: dict | None) -> bool:
    return value is not None and all(_finite(value.get(key)) for key in ("mean", "ci_low", "ci_high"))
