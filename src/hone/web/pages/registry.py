"""The registry section: the project's models with their versions and the promotions waiting for approval, and a
page per version with its lineage, its model's aliases and their history, its evaluations and promotion requests,
and the actions the visitor's role allows (request, approve or reject, roll back); its model card and its Annex IV
technical documentation rendered from Markdown with raw HTML shown as text."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from markdown_it import MarkdownIt
from markupsafe import Markup

from hone.web.core import Api, ApiFailure, PageApi, Visitor, VisitorDep, checked_form, path_part, redirect, render

router = APIRouter()

# What the page says after a change it made, by the `done` query parameter (never text taken from the URL).
NOTICES = {
    "pending": "Promotion requested: it waits for an approver.",
    "promoted": "Promoted: the alias points at this version now.",
    "approved": "Approval recorded.",
    "rejected": "Request rejected.",
    "refused": "The policy refused the promotion when the last approval came.",
    "rolled_back": "Rolled back: the alias points at the version it held before.",
}
_FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n", re.DOTALL)


def _markdown() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": False}).enable("table")


def markdown_html(markdown: str) -> Markup:
    """Markdown as HTML for a page: raw HTML in it is shown as text, and its headings sit one level under the
    page's own title."""
    parser = _markdown()
    tokens = parser.parse(markdown)
    for token in tokens:
        if token.type in ("heading_open", "heading_close"):
            token.tag = f"h{min(int(token.tag[1]) + 1, 6)}"
    return Markup(parser.renderer.render(tokens, parser.options, {}))  # noqa: S704 (markdown-it escaped the text)


def _text(fields: dict[str, Any], key: str) -> str | None:
    """A form field as one stripped string (None when left empty or sent twice)."""
    value = fields.get(key)
    return value.strip() or None if isinstance(value, str) else None


def _part(value: str | int) -> str:
    """A model, version, alias or request id made safe for a path; '.' or '..' would climb the path, so no name."""
    if set(str(value)) <= {"."}:
        raise ApiFailure(404, "There is no such page")
    return path_part(str(value))


def _version_url(model: str, version: str | int) -> str:
    return f"/registry/{_part(model)}/{_part(version)}"


def _api_version(model: str, version: str | int) -> str:
    return f"/v1/registry/models/{_part(model)}/versions/{_part(version)}"


def _why_not(visitor: Visitor, role: str, action: str) -> str | None:
    """Why the visitor may not take `action` (None when their role allows it)."""
    if visitor.can(role):
        return None
    return f"{action} needs the {role} role; you are a {visitor.caller.role}."


@router.get("/registry")
async def registry_home(request: Request, visitor: VisitorDep, api: Api):
    """Every model of the project with its versions, and the promotion requests waiting for a decision."""
    versions = (await api.get("/v1/registry/models"))["data"]
    pending = (await api.get("/v1/registry/promotions", status="pending"))["data"]
    models: dict[str, list[dict]] = {}
    for version in versions:
        models.setdefault(version["model"], []).append(version)
    numbers = {v["name"]: v["version"] for v in versions}
    return render(request, visitor, "registry/list.html", models=models, pending=pending, numbers=numbers)


async def _version_context(api: PageApi, visitor: Visitor, model: str, version: str) -> dict[str, Any]:
    """Everything the version page shows, each piece from the /v1 API as the visitor."""
    shown = await api.get(_api_version(model, version))
    lineage = await api.get(f"{_api_version(model, version)}/lineage")
    quoted = _part(model)
    versions = (await api.get("/v1/registry/models", model=model))["data"]
    aliases = (await api.get(f"/v1/registry/models/{quoted}/aliases"))["data"]
    history = (await api.get(f"/v1/registry/models/{quoted}/history"))["data"]
    promotions = (await api.get("/v1/registry/promotions", model=model))["data"]
    own = visitor.caller.actor == shown["author"]
    decide = _why_not(visitor, "approver", "Approving or rejecting") or (
        f"You ({visitor.caller.actor}) trained this version: an approver who is not its author must decide."
        if own else None)
    return {"v": shown, "lineage": {link["stage"]: link for link in lineage["lineage"]},
            "numbers": {v["name"]: v["version"] for v in versions}, "aliases": aliases,
            "history": list(reversed(history)),
            "promotions": [p for p in promotions if p["version"] == shown["name"]],
            "cannot_request": _why_not(visitor, "developer", "Requesting a promotion"),
            "cannot_decide": decide, "cannot_roll_back": _why_not(visitor, "approver", "Rolling back"),
            "page_url": _version_url(model, shown["version"])}


@router.get("/registry/{model}/{version}")
async def version_page(request: Request, model: str, version: str, visitor: VisitorDep, api: Api, done: str = ""):
    """One version: lineage, aliases and their history, evaluations, promotion requests and the actions."""
    context = await _version_context(api, visitor, model, version)
    return render(request, visitor, "registry/version.html", notice=NOTICES.get(done), form={}, **context)


async def _refused(request: Request, visitor: Visitor, api: PageApi, model: str, version: str, failure: ApiFailure,
                   form: dict[str, Any]):
    """The version page again, with the API's refusal at the top and its status, and the form as it was sent."""
    context = await _version_context(api, visitor, model, version)
    return render(request, visitor, "registry/version.html", status=failure.status, error=failure, form=form,
                  **context)


@router.post("/registry/{model}/{version}/promote")
async def request_promotion(request: Request, model: str, version: str, visitor: VisitorDep, api: Api):
    """Ask to point an alias at this version (developer and above; the project's policy may refuse at once)."""
    fields = await checked_form(request, visitor)
    body = {"version": version, "alias": _text(fields, "alias") or "", "reason": _text(fields, "reason")}
    try:
        promotion = await api.post(f"/v1/registry/models/{_part(model)}/promotions", json=body)
    except ApiFailure as failure:
        return await _refused(request, visitor, api, model, version, failure, fields)
    return redirect(f"{_version_url(model, version)}?done={promotion['status']}")


@router.post("/registry/{model}/{version}/promotions/{request_id}/{decision}")
async def decide(request: Request, model: str, version: str, request_id: str, decision: str, visitor: VisitorDep,
                 api: Api):
    """Approve or reject a promotion request with a comment (approvers who did not train the version)."""
    if decision not in ("approve", "reject"):
        raise ApiFailure(404, "There is no such page")
    fields = await checked_form(request, visitor)
    try:
        promotion = await api.post(f"/v1/registry/promotions/{_part(request_id)}/{decision}",
                                   json={"comment": _text(fields, "comment")})
    except ApiFailure as failure:
        return await _refused(request, visitor, api, model, version, failure, fields)
    done = {"pending": "approved"}.get(promotion["status"], promotion["status"])  # pending: more approvals needed
    return redirect(f"{_version_url(model, version)}?done={done}")


@router.post("/registry/{model}/{version}/aliases/{alias}/rollback")
async def roll_back(request: Request, model: str, version: str, alias: str, visitor: VisitorDep, api: Api):
    """Point an alias of the model back at the version it held before (approvers)."""
    fields = await checked_form(request, visitor)
    try:
        await api.post(f"/v1/registry/models/{_part(model)}/aliases/{_part(alias)}/rollback",
                       json={"reason": _text(fields, "reason")})
    except ApiFailure as failure:
        return await _refused(request, visitor, api, model, version, failure, fields)
    return redirect(f"{_version_url(model, version)}?done=rolled_back")


@router.get("/registry/{model}/{version}/card")
async def card_page(request: Request, model: str, version: str, visitor: VisitorDep, api: Api):
    """The version's model card: its metadata block as text and its body rendered."""
    card = await api.get(f"{_api_version(model, version)}/card")
    shown = await api.get(_api_version(model, version))
    found = _FRONT_MATTER.match(card["markdown"])
    metadata, body = (found.group(1), card["markdown"][found.end():]) if found else ("", card["markdown"])
    return render(request, visitor, "registry/markdown.html", v=shown, kind="Model card", metadata=metadata,
                  body=markdown_html(body), page_url=_version_url(model, shown["version"]))


@router.get("/registry/{model}/{version}/document")
async def document_page(request: Request, model: str, version: str, visitor: VisitorDep, api: Api):
    """The version's EU AI Act Annex IV technical documentation."""
    document = await api.get(f"{_api_version(model, version)}/document")
    shown = await api.get(_api_version(model, version))
    return render(request, visitor, "registry/markdown.html", v=shown, kind="Technical documentation (Annex IV)",
                  metadata="", body=markdown_html(document["markdown"]),
                  page_url=_version_url(model, shown["version"]))
