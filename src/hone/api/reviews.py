"""`/v1/reviews`: human review rounds, blind side-by-side judgments of two candidates' replies, in the caller's
project (another project's round answers 404).

Roles: any role (viewer and above) may review: list rounds, get their next item, judge it. Creating a round, reading
its results and exporting its corrections need a developer; a round from captured traffic needs an admin to create,
as it shows end users' (PII-masked) messages to every reviewer and only admins read captured traffic (/v1/captures).
Results stay with developers so reviewers stay blind to which candidate is winning, and what a round compares
(candidates, model version, evaluation) is shown to developers and above only; a reviewer's item carries only its
id, the prompt and replies A and B.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from hone.api.auth import Caller, Developer, Viewer
from hone.api.errors import APIError, error_responses
from hone.api.keys import role_allows
from hone.eval.human_review import (
    MAX_ITEMS,
    MAX_TEXT,
    Choice,
    Export,
    Results,
    ReviewerItem,
    ReviewerQueue,
    ReviewStore,
    Round,
)

router = APIRouter(prefix="/reviews", tags=["reviews"])


def _store(request: Request) -> ReviewStore:
    return ReviewStore(request.app.state.server.config.database)


def _reveals(me: Caller) -> bool:
    """Developers and above see what a round compares; reviewers with the viewer role stay blind."""
    return role_allows(me.role, "developer")


class RoundCreate(BaseModel):
    """A new round: from an evaluation's per-example replies, or from captured shadow traffic of a model."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["evaluation", "traffic"] = "evaluation"
    evaluation: str | None = Field(None, description="An evaluation id (eval-N) to sample from.")
    model_version: str | None = Field(None, description="Or: a version whose newest evaluation to sample from.")
    model: str | None = Field(None, description="traffic: the model (or MODEL@ALIAS) the requests named.")
    candidates: list[str] | None = Field(None, min_length=2, max_length=2, description=(
        "evaluation: the two candidates to compare, first and second (default: the baseline and the candidate of "
        "the eval's verdict)."))
    items: int = Field(20, ge=1, le=MAX_ITEMS, description="Prompts to sample.")
    repeats: int | None = Field(None, ge=0, description="Items each reviewer sees twice (default: about 1 in 10).")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    name: str | None = Field(None, max_length=256)


class RoundList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Round]
    has_more: bool = False


class JudgmentCreate(BaseModel):
    """A reviewer's judgment of one item; sending another replaces it."""

    model_config = ConfigDict(extra="forbid")

    choice: Choice
    corrected_answer: str | None = Field(None, max_length=MAX_TEXT)
    reason: str | None = Field(None, max_length=MAX_TEXT)


class ExportCreate(BaseModel):
    """Which training files to write (both by default)."""

    model_config = ConfigDict(extra="forbid")

    corrections: bool = Field(True, description="The corrected answers as a chat fine-tune file.")
    preferences: bool = Field(True, description="The judgments as an OpenAI DPO file.")


EVERYTHING = ExportCreate()  # no body: write both files


class ReviewerItemList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ReviewerItem]
    has_more: bool = False


@router.post("", response_model=Round, responses=error_responses(400, 401, 403, 404, 409))
async def create_round(me: Developer, request: Request, body: RoundCreate) -> Round:
    """Sample a new round (developer+; from captured traffic, admin); audited."""
    if body.source == "traffic" and not role_allows(me.role, "admin"):
        raise APIError(403, "a round from captured traffic needs the admin role: it shows end users' messages to "
                       f"reviewers; the key '{me.key_name}' has the {me.role} role", type="permission_error",
                       code="insufficient_role", param="source")
    return await run_in_threadpool(_store(request).create, me.project, actor=me.actor, **body.model_dump())


@router.get("", response_model=RoundList, responses=error_responses(401, 403))
async def list_rounds(me: Viewer, request: Request, evaluation: str | None = None, model_version: str | None = None,
                      limit: Annotated[int, Query(ge=1, le=100)] = 50) -> RoundList:
    """The project's rounds, newest first; `evaluation` (eval-N) or `model_version` keep one source's rounds (those
    filters need a developer: they say what a round compares)."""
    if (evaluation or model_version) and not _reveals(me):
        raise APIError(403, "filtering rounds by evaluation or model_version needs the developer role or above; "
                       "reviewers are not told what a round compares", type="permission_error",
                       code="insufficient_role", param="evaluation" if evaluation else "model_version")
    found = await run_in_threadpool(_store(request).list, me.project, me.actor, _reveals(me), evaluation=evaluation,
                                    model_version=model_version, limit=limit)
    return RoundList(data=found)


@router.get("/{review_id}", response_model=Round, responses=error_responses(401, 403, 404))
async def retrieve_round(me: Viewer, request: Request, review_id: str) -> Round:
    return await run_in_threadpool(_store(request).get, me.project, review_id, me.actor, _reveals(me))


@router.get("/{review_id}/next", response_model=ReviewerQueue, responses=error_responses(401, 403, 404))
async def next_item(me: Viewer, request: Request, review_id: str) -> ReviewerQueue:
    """The caller's next unjudged item in their own blinded order, and their progress."""
    return await run_in_threadpool(_store(request).next_item, me.project, review_id, me.actor)


@router.get("/{review_id}/items", response_model=ReviewerItemList, responses=error_responses(401, 403, 404))
async def list_items(me: Viewer, request: Request, review_id: str) -> ReviewerItemList:
    """Every item in the caller's order, with the caller's judgment where given."""
    return ReviewerItemList(data=await run_in_threadpool(_store(request).items, me.project, review_id, me.actor))


@router.get("/{review_id}/items/{item_id}", response_model=ReviewerItem, responses=error_responses(401, 403, 404))
async def retrieve_item(me: Viewer, request: Request, review_id: str, item_id: str) -> ReviewerItem:
    return await run_in_threadpool(_store(request).item, me.project, review_id, item_id, me.actor)


@router.post("/{review_id}/items/{item_id}/judgment", response_model=ReviewerItem,
             responses=error_responses(400, 401, 403, 404))
async def judge_item(me: Viewer, request: Request, review_id: str, item_id: str, body: JudgmentCreate) -> ReviewerItem:
    """Judge one of the caller's items: A, B, tie or both_bad, with an optional corrected answer and reason;
    audited, and a second judgment replaces the first."""
    return await run_in_threadpool(lambda: _store(request).judge(me.project, review_id, item_id, me.actor,
                                                                 **body.model_dump()))


@router.get("/{review_id}/results", response_model=Results, responses=error_responses(401, 403, 404))
async def results(me: Developer, request: Request, review_id: str) -> Results:
    """Win rates with 95% CIs, reviewer agreement (kappa), self-consistency, LLM judge agreement (developer+)."""
    return await run_in_threadpool(_store(request).results, me.project, review_id)


@router.post("/{review_id}/export", response_model=Export, responses=error_responses(401, 403, 404))
async def export(me: Developer, request: Request, review_id: str, body: ExportCreate = EVERYTHING) -> Export:
    """Corrections as a chat fine-tune file and judgments as DPO pairs, both /v1/files objects (developer+); the
    body may leave either out."""
    return await run_in_threadpool(_store(request).export, me.project, review_id, request.app.state.files, me.actor,
                                   corrections=body.corrections, preferences=body.preferences)
