"""`/v1/monitor/...`: the project's monitored traffic per model, a served model's health per time window, its
traffic's drift from its training data, and the retrieval indexes the project's requests may name.

Every role reads the figures; the drift's example prompts are captured user text, so only admin keys get them
(others get an empty list and a note). Another project's model answers 404.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from hone.api.auth import Viewer
from hone.api.errors import error_responses
from hone.monitor.report import MonitorReport, as_utc, health, parse_duration, parse_since
from hone.monitor.traffic_drift import TrafficDrift, hide_examples, traffic_drift
from hone.store import engine_for, session
from hone.store.tables import CapturedRequest

router = APIRouter(prefix="/monitor", tags=["monitor"])


def _db(request: Request) -> str | None:
    return request.app.state.server.config.database


class MonitoredModel(BaseModel):
    """The captured traffic of one model name as clients sent it (e.g. support@champion), through one alias."""

    model: str
    alias: str | None = Field(None, description="The alias the name went through; null for a version or the base.")
    requests: int
    first_request_at: str
    last_request_at: str


class MonitoredModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[MonitoredModel]



def traffic_by_model(project: str, db_url: str | None) -> list[MonitoredModel]:
    """Captured requests per model name and alias of `project`, most recent traffic first."""
    with session(engine_for(db_url)) as db:
        rows = db.execute(select(CapturedRequest.model, CapturedRequest.alias, func.count(),
                                 func.min(CapturedRequest.created_at), func.max(CapturedRequest.created_at))
                          .where(CapturedRequest.project == project)
                          .group_by(CapturedRequest.model, CapturedRequest.alias)).all()
    found = [MonitoredModel(model=model, alias=alias, requests=count, first_request_at=as_utc(first).isoformat(),
                            last_request_at=as_utc(last).isoformat()) for model, alias, count, first, last in rows]
    return sorted(found, key=lambda m: m.last_request_at, reverse=True)


@router.get("/models", response_model=MonitoredModelList)
async def models(request: Request, me: Viewer) -> MonitoredModelList:
    """The project's captured traffic per model name and alias: request counts and first and last request."""
    return MonitoredModelList(data=await run_in_threadpool(traffic_by_model, me.project, _db(request)))


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
