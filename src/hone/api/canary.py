"""`/v1/monitor/canaries`: canary and shadow splits of an alias, with the live comparison of their two arms.

Starting, stopping and checking a split needs an approver (a canary sends real traffic to a version nobody approved
yet); reading is for every role. Another project's split answers 404.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from hone.api.auth import Approver, Viewer
from hone.api.errors import error_responses
from hone.monitor.canary import ArmComparison, Canaries, CanaryDecision, Split

router = APIRouter(prefix="/monitor/canaries", tags=["monitor"])


def _canaries(request: Request) -> Canaries:
    return Canaries(request.app.state.server.config.database)


class CanaryCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(max_length=256, description="The registered model, e.g. support.")
    alias: str = Field("champion", max_length=64, description="The alias whose traffic is split; its current "
                       "version is the champion.")
    challenger: str = Field(max_length=512, description="The challenger's version number (3 or \"v3\") or name.")
    mode: Literal["canary", "shadow"] = Field("canary", description="canary: the challenger answers a share of "
                                              "requests; shadow: it answers a copy, captured but never returned.")
    weight: float = Field(0.1, gt=0, le=1, description="The share of requests (of users or conversations, when "
                          "sticky) the challenger answers, or that are copied to it in shadow mode.")
    sticky: Literal["user", "conversation", "request"] = Field("user", description="What keeps its arm: the "
                                                               "request's `user`, the conversation, or nothing.")
    window_requests: int = Field(200, ge=1, le=1_000_000, description="Challenger requests after which a split "
                                 "that found nothing worse passes.")
    reason: str | None = Field(None, max_length=2000)


class CanaryStop(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(None, max_length=2000)


class CanaryCheckRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: str | None = Field(None, max_length=2000, description="Why the check runs now (kept with a decision).")


NO_REASON = CanaryStop()  # the bodies may be left out
NO_NOTE = CanaryCheckRequest()


class PromotionOutcome(BaseModel):
    """The promotion asked for when a split passed: offered, refused, pending approval or promoted."""

    status: Literal["offered", "refused", "pending", "promoted", "rejected"]
    request_id: str | None = None
    message: str | None = None


class TestFigures(BaseModel):
    metric: Literal["format_validity", "rating", "latency"]
    status: Literal["worse", "held", "needed", "not_applicable"]
    p_value: float | None = None
    alpha: float
    detail: str


class Outcome(BaseModel):
    """Why a split ended, with the figures of the tests at that moment."""

    decision: Literal["rolled_back", "passed", "stopped", "ended"]
    detail: str
    note: str | None = None
    tests: list[TestFigures] = []
    promotion: PromotionOutcome | None = None


class Canary(BaseModel):
    """A split of an alias between its champion and a challenger, and its two arms compared."""

    object: Literal["monitor.canary"] = "monitor.canary"
    id: str
    model: str
    alias: str
    champion_version: str
    challenger_version: str
    mode: Literal["canary", "shadow"]
    weight: float
    sticky: Literal["user", "conversation", "request"]
    status: Literal["active", "rolled_back", "passed", "promoted", "ended"]
    window_requests: int
    reason: str | None = None
    actor: str | None = None
    created_at: str
    ended_at: str | None = None
    outcome: Outcome | None = None
    comparison: ArmComparison | None = Field(None, description="Champion arm vs challenger arm since the start.")


class CanaryList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Canary]
    has_more: bool = False


class CanaryCheck(BaseModel):
    """What a check did: rolled the split back, passed it (and asked for the promotion), or let it hold."""

    action: Literal["rolled_back", "passed", "promoted", "ended", "holding"]
    canary: Canary


def _canary(split: Split, comparison: ArmComparison | None) -> Canary:
    fields = {k: getattr(split, k) for k in Canary.model_fields if hasattr(split, k) and k != "outcome"}
    return Canary(**fields, outcome=split.outcome, comparison=comparison)


def _with_comparison(canaries: Canaries, split: Split) -> Canary:
    return _canary(split, canaries.compare(split.project, split.id))


@router.post("", response_model=Canary, responses=error_responses(400, 403, 404, 409))
def start(me: Approver, request: Request, body: CanaryCreate) -> Canary:
    """Split MODEL@ALIAS between its current version and a challenger (one active split per alias; audited)."""
    canaries = _canaries(request)
    split = canaries.start(me.project, body.model, body.alias, body.challenger, mode=body.mode, weight=body.weight,
                           sticky=body.sticky, window_requests=body.window_requests, actor=me.actor,
                           reason=body.reason)
    return _canary(split, None)


@router.get("", response_model=CanaryList)
def list_canaries(me: Viewer, request: Request, model: str | None = None,
                  status: Literal["active", "rolled_back", "passed", "promoted", "ended"] | None = None) -> CanaryList:
    """The project's splits, newest first, each with its arms compared."""
    canaries = _canaries(request)
    return CanaryList(data=[_with_comparison(canaries, s) for s in canaries.list(me.project, model=model,
                                                                                status=status)])


@router.get("/{split_id}", response_model=Canary, responses=error_responses(404))
def get_canary(me: Viewer, request: Request, split_id: str) -> Canary:
    canaries = _canaries(request)
    return _with_comparison(canaries, canaries.get(me.project, split_id))


@router.post("/{split_id}/stop", response_model=Canary, responses=error_responses(403, 404, 409))
def stop(me: Approver, request: Request, split_id: str, body: CanaryStop = NO_REASON) -> Canary:
    """End an active split: all traffic back to the champion (audited)."""
    canaries = _canaries(request)
    return _with_comparison(canaries, canaries.stop(me.project, split_id, actor=me.actor, reason=body.reason))


@router.post("/{split_id}/check", response_model=CanaryCheck, responses=error_responses(403, 404))
def check(me: Approver, request: Request, split_id: str, body: CanaryCheckRequest = NO_NOTE) -> CanaryCheck:
    """Decide the split now: roll it back if the challenger is significantly worse, pass it (and ask for its
    promotion) once its window is full and nothing is worse, else let it hold."""
    decision: CanaryDecision = _canaries(request).check(me.project, split_id, actor=me.actor, note=body.note)
    return CanaryCheck(action=decision.action, canary=_canary(decision.split, decision.comparison))
