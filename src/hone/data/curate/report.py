"""report.html for a prepared dataset: what came in, what each step did, what was removed and why."""

from __future__ import annotations

import json
from html import escape

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;
margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top;font-size:14px}
th{background:#f3f3f3}.ready{color:#080}.thin{color:#a60}.too-small{color:#b00}code{font-size:12px}"""
MAX_ROWS = 500


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows[:MAX_ROWS])
    more = f"<p>… and {len(rows) - MAX_ROWS} more rows in report.json</p>" if len(rows) > MAX_ROWS else ""
    return f"<table><tr>{head}</tr>{body}</table>{more}"


def _clusters(steps: list[dict]) -> str:
    """Exact and near-duplicate clusters: the kept example beside each one removed as its copy."""
    rows, hidden = [], 0
    for step in steps:
        extra = step.get("extra", {})
        hidden += extra.get("clusters_total", 0) - len(extra.get("clusters", []))
        for cluster in extra.get("clusters", []):
            kept = cluster["kept"]
            for removed in cluster["removed"]:
                rows.append([step["name"], f"{kept['source']}:{kept['line']}", kept.get("excerpt", ""),
                             f"{removed['source']}:{removed['line']}", removed.get("excerpt", ""),
                             removed.get("similarity", 1.0)])
    if not rows:
        return "<p>No duplicate clusters.</p>"
    more = f"<p>{hidden} more clusters are counted in the steps table.</p>" if hidden else ""
    return _table(["step", "kept", "kept excerpt", "removed", "removed excerpt", "similarity"], rows) + more


def render_report(manifest: dict, details: dict) -> str:
    """A self-contained HTML page (no external assets); every text is escaped."""
    verdict = manifest["readiness"]
    level = verdict.get("verdict", "")
    counts = manifest["counts"]
    steps = details["steps"]
    step_rows = [[s["name"], json.dumps(s["params"]), json.dumps(s["counts"]), len(s["removed"])] for s in steps]
    removed_rows = [[s["name"], f"{r['source']}:{r['line']}", r["reason"], r["detail"]]
                    for s in steps for r in s["removed"]]
    problem_rows = [[p["field"], p["line"], p["severity"], p["message"]] for p in details["problems"]]
    source_rows = [[s["path"], s["format"], s.get("examples", ""), s.get("broken_lines", ""),
                    s.get("sha256", "")[:16]] for s in manifest["sources"]]
    short_id = escape(manifest["dataset_id"][:12])
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>hone dataset {short_id}</title>
<style>{STYLE}</style></head><body>
<h1>Dataset {short_id}</h1>
<p>dataset id <code>{escape(manifest['dataset_id'])}</code></p>
<p>{counts['ingested']} examples ingested, {counts['broken_lines']} broken lines;
train {counts['train']}, val {counts['val']}, test {counts['test']}.</p>
<h2>Readiness: <span class="{escape(level.replace(' ', '-'))}">{escape(level)}</span></h2>
<p>{escape(verdict.get('message', ''))}</p>
<h2>Sources</h2>{_table(['path', 'format', 'examples', 'broken lines', 'sha256'], source_rows)}
<h2>Steps</h2>{_table(['step', 'parameters', 'counts', 'removed'], step_rows)}
<h2>Duplicate clusters</h2>{_clusters(steps)}
<h2>Removed examples</h2>{_table(['step', 'where', 'reason', 'detail'], removed_rows)}
<h2>Broken input lines</h2>{_table(['file', 'line', 'severity', 'message'], problem_rows)}
</body></html>
"""
