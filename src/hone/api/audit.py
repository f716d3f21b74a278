"""`/v1/audit`: the caller's project's audit entries, their export and the log's verification, for auditors.

Auditors hold an approver or admin key. Every answer is scoped to the caller's project: another project's
entries answer 404, and verification tells whether the whole log is intact without saying how much other
projects did or where their entries broke.
"""

from __future__ import annotations

import os
import tempfile
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field, WithJsonSchema
from starlette.background import BackgroundTask

from hone import audit
from hone.api.auth import Approver
from hone.api.errors import APIError, error_responses
from hone.errors import HoneError, NotFoundError

ENTRY_PREFIX = "audit-"
# A JSON object whose values may be any JSON: what each action records differs, and the hash covers it as is.
JsonObject = Annotated[dict[str, Any], WithJsonSchema({
    "type": "object", "additionalProperties": {"type": ["string", "number", "boolean", "null", "array", "object"]}})]


class AuditExportLine(BaseModel):
    """One line of an audit export: an entry with the hashes that chain it, as `hone audit export` writes it."""

    seq: int = Field(description="Position in the server's whole log (other projects' entries fill the gaps).")
    project: str
    actor: str | None
    action: str = Field(description="What happened, e.g. file.uploaded, job.created, dataset.prepared.")
    object_type: str
    object_id: str
    details: JsonObject = Field(description="What the action records, e.g. a file's name and size.")
    created_at: str = Field(description="ISO 8601 UTC, exactly as hashed.")
    prev_hash: str
    hash: str


class AuditEntryModel(AuditExportLine):
    """One audit log entry."""

    id: str = Field(description="audit-{seq}; the cursor `after` takes.")
    object: Literal["audit.entry"] = "audit.entry"


class AuditEntryList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AuditEntryModel]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class AuditVerification(BaseModel):
    """Whether the whole audit log (every project's) still checks out: hashes, chain and signed checkpoints."""

    object: Literal["audit.verification"] = "audit.verification"
    ok: bool
    first_broken_seq: int | None = Field(None, description="The first broken entry, when it is this project's; "
                                         "null when the log is intact or the break is elsewhere.")


def entry_model(entry: audit.AuditEntry) -> AuditEntryModel:
    return AuditEntryModel(id=f"{ENTRY_PREFIX}{entry.seq}", **entry.to_dict())


def _seq(entry_id: str, param: str) -> int:
    """The seq an entry id names; NotFoundError for anything that is not an entry id."""
    number = entry_id.removeprefix(ENTRY_PREFIX)
    if not (entry_id.startswith(ENTRY_PREFIX) and number.isdigit()):
        raise NotFoundError(f"no audit entry '{entry_id}'", param=param, code="not_found")
    return int(number)


def _database(request: Request) -> str | None:
    return request.app.state.server.config.database


router = APIRouter(prefix="/audit", tags=["audit"])


@router.get("/entries", response_model=AuditEntryList, responses=error_responses(400, 401, 403, 404))
def list_entries(me: Approver, request: Request, action: str | None = None, actor: str | None = None,
                 object_type: Annotated[str | None, Query(description="e.g. file, fine_tuning.job.")] = None,
                 object_id: str | None = None,
                 since: Annotated[str | None, Query(description="ISO 8601; UTC unless it names a zone.")] = None,
                 limit: Annotated[int, Query(ge=1, le=1000)] = 50, after: str | None = None) -> AuditEntryList:
    """The project's entries, newest first, optionally of one action, actor, object type or object, or since a time."""
    before = None
    if after is not None:
        before = _seq(after, "after")
        if audit.entry(before, me.project, _database(request)) is None:
            raise NotFoundError(f"no audit entry '{after}'", param="after", code="not_found")
    try:
        found = audit.entries(limit + 1, me.project, _database(request), action=action, actor=actor,
                              object_type=object_type, object_id=object_id, since=since, before=before)
    except HoneError as error:  # `since` is not a time
        raise APIError(400, error.message, param="since", code="invalid_value") from None
    data = [entry_model(entry) for entry in found[:limit]]
    return AuditEntryList(data=data, has_more=len(found) > limit, first_id=data[0].id if data else None,
                          last_id=data[-1].id if data else None)


@router.get("/entries/{entry_id}", response_model=AuditEntryModel, responses=error_responses(401, 403, 404))
def retrieve(me: Approver, request: Request, entry_id: str) -> AuditEntryModel:
    found = audit.entry(_seq(entry_id, "entry_id"), me.project, _database(request))
    if found is None:
        raise NotFoundError(f"no audit entry '{entry_id}'", param="entry_id", code="not_found")
    return entry_model(found)


EXPORT_LINES = {200: {"description": "JSON lines, oldest first, each an AuditExportLine: what `hone audit export "
                      "--project P` writes",
                      "content": {"application/jsonl": {"schema": {"$ref": "#/components/schemas/AuditExportLine"}}}}}


@router.get("/export", response_class=FileResponse, responses={**EXPORT_LINES, **error_responses(400, 401, 403)})
def export(me: Approver, request: Request,
           since: Annotated[str | None, Query(description="ISO 8601; UTC unless it names a zone.")] = None
           ) -> FileResponse:
    """Download the project's entries with their hashes, oldest first, one JSON object a line."""
    descriptor, path = tempfile.mkstemp(prefix="hone-audit-", suffix=".jsonl")
    os.close(descriptor)
    try:
        audit.export(path, since=since, project=me.project, db_url=_database(request))
    except HoneError as error:
        os.unlink(path)
        raise APIError(400, error.message, param="since", code="invalid_value") from None
    except BaseException:
        os.unlink(path)
        raise
    return FileResponse(path, media_type="application/jsonl", filename=f"audit-{me.project}.jsonl",
                        background=BackgroundTask(os.unlink, path))


@router.get("/verify", response_model=AuditVerification, responses=error_responses(401, 403))
def verify(me: Approver, request: Request) -> AuditVerification:
    """Recompute the whole log's hash chain and check its signed checkpoints."""
    report = audit.verify_for_project(me.project, _database(request))
    return AuditVerification(ok=report.ok, first_broken_seq=report.first_broken_seq)
