"""`/v1/captures`: the caller's project's captured requests and answers (PII masked as stored) with their
feedback. Captured traffic is what end users typed, so only an admin key reads it; another project's is 404."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from hone.api.audit import JsonObject
from hone.api.auth import Admin
from hone.api.errors import error_responses
from hone.errors import NotFoundError
from hone.monitor.capture import CapturedExchange, CaptureStore


class CapturedFeedback(BaseModel):
    rating: int | None
    correction: str | None = Field(description="The corrected answer, PII masked.")
    created_at: str


class Capture(BaseModel):
    """One captured exchange: the request body and the answer as stored (PII masked), and every feedback."""

    id: str = Field(description="The response id the completion answered with (what /v1/feedback takes).")
    object: Literal["capture"] = "capture"
    model: str
    created_at: str
    request: JsonObject = Field(description="The request body as sent, PII masked.")
    response: str = Field(description="The answer, PII masked.")
    usage: JsonObject
    feedback: list[CapturedFeedback] = Field(description="Oldest first; the latest one counts.")


class CaptureList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Capture]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


def capture_model(exchange: CapturedExchange) -> Capture:
    return Capture(id=exchange.response_id, model=exchange.model, created_at=exchange.created_at,
                   request=exchange.request, response=exchange.response_text, usage=exchange.usage,
                   feedback=[CapturedFeedback(rating=f.rating, correction=f.correction, created_at=f.created_at)
                             for f in exchange.feedback])


def capture_store(request: Request) -> CaptureStore:
    """The server's capture store (its database's captures, whatever the served models capture now)."""
    return request.app.state.server.capture


Store = Annotated[CaptureStore, Depends(capture_store)]
router = APIRouter(prefix="/captures", tags=["captures"])


@router.get("", response_model=CaptureList, responses=error_responses(401, 403, 404))
def list_captures(me: Admin, store: Store, model: str | None = None, min_rating: int | None = None,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 20, after: str | None = None) -> CaptureList:
    """The project's captured exchanges, newest first; `min_rating` keeps those whose latest rating is at least
    that."""
    try:
        found, has_more = store.captured(me.project, model=model, min_rating=min_rating, limit=limit, after=after)
    except KeyError:
        raise NotFoundError(f"no captured response with id '{after}'", param="after", code="not_found") from None
    data = [capture_model(exchange) for exchange in found]
    return CaptureList(data=data, has_more=has_more, first_id=data[0].id if data else None,
                       last_id=data[-1].id if data else None)


@router.get("/{response_id}", response_model=Capture, responses=error_responses(401, 403, 404))
def retrieve(me: Admin, store: Store, response_id: str) -> Capture:
    try:
        return capture_model(store.captured_one(me.project, response_id))
    except KeyError:
        raise NotFoundError(f"no captured response with id '{response_id}'", param="response_id",
                            code="not_found") from None
