"""The monitoring section of the dashboard: the project's served models and aliases with their traffic, and per
model its health per window (charts and table), drift from its training data with the alarm threshold and the most
drifted prompts, its canary splits with both arms compared, and the retraining loop's status.

Every figure comes from the /v1/monitor, /v1/monitor/canaries and /v1/loop routes as the visitor; a section the
API refuses shows the API's message, the rest of the page still shows.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import TypeAdapter
from starlette.concurrency import run_in_threadpool

from hone.monitor.html import drift_charts, health_charts
from hone.monitor.report import MonitorReport
from hone.monitor.traffic_drift import TrafficDrift
from hone.web.core import Api, ApiFailure, PageApi, VisitorDep, path_part, render

router = APIRouter()
WINDOWS = ("15m", "1h", "1d")  # the report's window choices the page offers


async def _attempt(api: PageApi, path: str, **params: Any) -> tuple[Any, str | None]:
    """The API's answer, or None and its refusal message: one refused section must not hide the others."""
    try:
        return await api.get(path, **params), None
    except ApiFailure as failure:
        return None, failure.message


def _model_rows(traffic: list[dict], served: list[dict], versions: list[dict]) -> list[dict]:
    """Every name the project can monitor: names with traffic first, then served models, versions and aliases
    nobody called yet (0 requests). A served name that is neither called nor registered has no page yet (the API
    knows it only by its traffic), so it gets no link."""
    rows = [{"name": t["model"], "alias": t["alias"], "requests": t["requests"], "last": t["last_request_at"]}
            for t in traffic]
    registered = [f"{v['model']}@{a}" for v in versions for a in v["aliases"]] + [v["name"] for v in versions]
    seen = {row["name"] for row in rows}
    for name in dict.fromkeys([m["id"] for m in served] + registered):
        if name not in seen:
            rows.append({"name": name, "alias": name.rsplit("@", 1)[1] if "@" in name else None, "requests": 0,
                         "last": None})
    return [row | {"href": f"/monitoring/{path_part(row['name'])}" if row["requests"] or row["name"] in registered
                   else None} for row in rows]


@router.get("/monitoring")
async def model_list(request: Request, visitor: VisitorDep, api: Api):
    """The project's models and aliases with their captured traffic, each linking to its monitoring page."""
    traffic = await api.get("/v1/monitor/models")
    served = await api.get("/v1/models")
    versions = await api.get("/v1/registry/models")
    rows = _model_rows(traffic["data"], served["data"], versions["data"])
    return render(request, visitor, "monitoring/list.html", rows=rows)


def _charts(report: dict, drift: dict | None) -> tuple[list[str], list[str]]:
    """The health and drift charts as SVG, drawn by the monitor's own chart code from the API's answers."""
    health = health_charts(TypeAdapter(MonitorReport).validate_python(report))
    drifted = drift_charts(TypeAdapter(TrafficDrift).validate_python(drift)) if drift else []
    return health, drifted


def _group(model: str) -> str:
    """The registered model a name belongs to ("support@champion" -> "support"): what canaries and the loop key on."""
    return model.split("@", 1)[0]


@router.get("/monitoring/{model}")
async def model_page(request: Request, model: str, visitor: VisitorDep, api: Api, alias: str | None = None,
                     window: str = "1h", since: str | None = None):
    """One model's (or `model@alias`'s) health, drift, canaries and loop status."""
    alias = alias or None
    since = since or None
    report = await api.get(f"/v1/monitor/models/{path_part(model)}/report", window=window, since=since, alias=alias)
    drift, drift_error = await _attempt(api, f"/v1/monitor/models/{path_part(model)}/drift", since=since, alias=alias)
    canaries, canary_error = await _attempt(api, "/v1/monitor/canaries", model=_group(model))
    # The whole project's status, narrowed here: the API answers 404 for a name the loop does not watch.
    loop, loop_error = await _attempt(api, "/v1/loop/status")
    if loop:
        loop["models"] = [m for m in loop["models"] if m["model"] == _group(model)]
    health, drifted = await run_in_threadpool(_charts, report, drift)
    return render(request, visitor, "monitoring/model.html", model=model, href=f"/monitoring/{path_part(model)}",
                  alias=alias, window=window, since=since,
                  windows=WINDOWS, report=report, health_charts=health, drift=drift, drift_error=drift_error,
                  drift_charts=drifted, canaries=canaries["data"] if canaries else [], canary_error=canary_error,
                  loop=loop, loop_error=loop_error)
