"""`/v1/monitor/...`: a served model's health per time window and its traffic's drift from its training data.

Every role reads the figures; the drift's example prompts are captured user text, so only admin keys get them
(others get an empty list and a note). Another project's model answers 404.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from hone.api.auth import Viewer
from hone.api.errors import error_responses
from hone.monitor.report import MonitorReport, health, parse_duration, parse_since
from hone.monitor.traffic_drift import TrafficDrift, hide_examples, traffic_drift

router = APIRouter(prefix="/monitor", tags=["monitor"])


def _db(request: Request) -> str | None:
    return request.app.state.server.config.database


@router.get("/models/{model}/report", response_model=MonitorReport, responses=error_responses(400, 404))
async def report(model: str, request: Request, me: Viewer, since: str | None = None, until: str | None = None,
                 window: str = "1h", alias: str | None = None) -> MonitorReport:
    """Requests, latency and tokens/s percentiles, lengths, refusal/empty/truncated and format validity rates,
    ratings and corrections per `window` (15m, 1h, 1d) from `since` to `until` (ISO 8601, or 2h, 1d back from
    now)."""
    begin, end, step = parse_since(since), parse_since(until, param="until"), parse_duration(window)
    return await run_in_threadpool(health, me.project, model, db_url=_db(request), since=begin, until=end,
                                   window=step, alias=alias)


@router.get("/models/{model}/drift", response_model=TrafficDrift, responses=error_responses(400, 404))
async def drift(model: str, request: Request, me: Viewer, since: str | None = None, window_size: int | None = None,
                alias: str | None = None) -> TrafficDrift:
    """Drift of the traffic's prompts, reply lengths and format validity from the answering version's training
    data per window of `window_size` requests; the example prompts only for admin keys."""
    begin = parse_since(since)
    found = await run_in_threadpool(traffic_drift, me.project, model, db_url=_db(request), since=begin,
                                    window_size=window_size, alias=alias)
    return found if me.role == "admin" else hide_examples(found)
