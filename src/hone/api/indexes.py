"""`/v1/indexes`: the retrieval indexes the caller's project may name in a completion request (`index`)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from hone.api.auth import Viewer

router = APIRouter(tags=["indexes"])


class IndexList(BaseModel):
    object: Literal["list"] = "list"
    data: list[str] = Field(description="The names of the retrieval indexes the project's requests may name "
                            "(`index` in a completion request).")


@router.get("/indexes", response_model=IndexList)
async def indexes(request: Request, me: Viewer) -> IndexList:
    """The retrieval indexes this server lets the caller's project name (another project's are left out)."""
    return IndexList(data=request.app.state.server.config.project_indexes(me.project))
