"""The audit section of the dashboard: the visitor's project's audit log, filtered by actor, action and object,
page by page, with the result of `hone audit verify` (the whole log's hash chain and signed checkpoints).

Auditors hold an approver or admin key: for other roles the API refuses, and the page shows its message.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

from fastapi import APIRouter, Request

from hone.web.core import Api, ApiFailure, VisitorDep, render

router = APIRouter()
PAGE_SIZES = ("25", "50", "100", "200")


def _pretty(details: dict) -> str:
    """An entry's details as indented JSON (the template escapes it)."""
    return json.dumps(details, indent=2, sort_keys=True, ensure_ascii=False)


@router.get("/audit")
async def audit_log(request: Request, visitor: VisitorDep, api: Api, actor: str | None = None,
                    action: str | None = None, object_type: str | None = None, object_id: str | None = None,
                    since: str | None = None,
                    after: str | None = None, limit: str = "50"):
    """Entries newest first, `limit` a page, older pages after the cursor `after`; the verification on top.
    The filters go to the API as typed, so a bad one gets the API's own message."""
    asked = {"actor": actor, "action": action, "object_type": object_type, "object_id": object_id, "since": since}
    filters = {name: value.strip() for name, value in asked.items() if value and value.strip()}
    try:
        verification = await api.get("/v1/audit/verify")
        found = await api.get("/v1/audit/entries", limit=limit, after=after or None, **filters)
    except ApiFailure as failure:
        # The API refuses this role (or a filter): say why on the page itself, with its status.
        return render(request, visitor, "audit/list.html", status=failure.status, refused=failure.message,
                      filters=filters, limit=limit, sizes=PAGE_SIZES)
    entries = [entry | {"pretty": _pretty(entry["details"])} for entry in found["data"]]
    older = f"/audit?{urlencode(filters | {'limit': limit, 'after': found['last_id']})}" if found["has_more"] else None
    newest = f"/audit?{urlencode(filters | {'limit': limit})}" if after else None
    return render(request, visitor, "audit/list.html", entries=entries, verification=verification, filters=filters,
                  limit=limit, sizes=PAGE_SIZES, older=older, newest=newest, refused=None)
