"""`/v1/loop`: the retraining loop of the caller's project: its status per model (viewers and up), and running its
checks now (approvers and up; the workers run them every `loop_interval_s` anyway)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from hone.api.auth import Approver, Viewer
from hone.api.errors import error_responses
from hone.monitor.loop import LoopStatus, PeriodicRun, loop_status, run_periodic

router = APIRouter(tags=["loop"])


class LoopCheck(BaseModel):
    """How to run the checks."""

    model_config = ConfigDict(extra="forbid")

    force: bool = Field(True, description="Run them even when a worker ran them less than its interval ago.")


NOW = LoopCheck()  # the body may be left out


def _db(request: Request) -> str | None:
    return request.app.state.server.config.database


@router.get("/loop/status", response_model=LoopStatus, responses=error_responses(403))
def status(me: Viewer, request: Request, model: str | None = None) -> LoopStatus:
    """Per model: champion, latest firings and why, the running retrain (and the error of the last failed one: the
    champion keeps serving), evaluations pending, the active canary."""
    return loop_status(me.project, db_url=_db(request), model=model)


@router.post("/loop/check", response_model=PeriodicRun, responses=error_responses(400, 403))
def check(me: Approver, request: Request, body: LoopCheck = NOW) -> PeriodicRun:
    """Run the loop's checks for the caller's project now (triggers, evaluations of finished retrains, canaries);
    `ran` is false when another worker is running them."""
    return run_periodic(_db(request), f"api {me.actor}", force=body.force, projects=[me.project])
