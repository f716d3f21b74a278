"""`/v1/registry/...` and `/v1/projects/current`: versions, aliases with their history, gated promotions, approvals,
rollbacks and the project's settings, each scoped to the caller's project (another project's objects answer 404).

Reading is for every role; asking for a promotion needs a developer; approving, rejecting and rolling back need an
approver (who did not train the version); changing the project's settings needs an admin.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from hone.api.auth import Admin, Approver, Developer, Viewer
from hone.api.errors import error_responses
from hone.monitor.loop_settings import LoopChange
from hone.registry.projects import Projects, ProjectSettings
from hone.registry.promotion import Promotions
from hone.registry.versions import Registry

router = APIRouter(tags=["registry"])


def _db(request: Request) -> str | None:
    return request.app.state.server.config.database


class Version(BaseModel):
    """A registered version: its model, number, author, verdict and the aliases pointing at it."""

    name: str
    model: str
    version: int
    author: str | None = None
    base_model: str
    verdict: str | None = None
    created_at: str
    aliases: list[str] = []


class VersionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Version]
    has_more: bool = False


class Alias(BaseModel):
    model: str
    alias: str
    version: str
    updated_at: str


class AliasList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Alias]
    has_more: bool = False


class AliasMove(BaseModel):
    """One move of an alias: who, when, from which version to which, why."""

    alias: str
    action: Literal["promote", "rollback"]
    from_version: str | None = None
    to_version: str | None = None
    actor: str | None = None
    reason: str | None = None
    request_id: str | None = None
    created_at: str


class AliasHistory(BaseModel):
    object: Literal["list"] = "list"
    data: list[AliasMove]
    has_more: bool = False


class PolicyCheck(BaseModel):
    rule: str
    passed: bool
    detail: str


class Decision(BaseModel):
    actor: str
    decision: Literal["approved", "rejected"]
    comment: str | None = None
    created_at: str


class Promotion(BaseModel):
    """A request to point an alias at a version, the policy's checks, and the approvers' decisions."""

    object: Literal["registry.promotion"] = "registry.promotion"
    id: str
    model: str
    alias: str
    version: str
    requested_by: str | None = None
    reason: str | None = None
    status: Literal["pending", "promoted", "rejected", "refused"]
    checks: list[PolicyCheck]
    baseline_version: str | None = Field(None, description="The version the alias pointed to at the request.")
    created_at: str
    decided_at: str | None = None
    approvals: list[Decision]


class PromotionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Promotion]
    has_more: bool = False


class PromotionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(description="The version's number (3 or \"v3\") or its full name.", max_length=512)
    alias: str = Field(description="champion, challenger, staging or any name.", max_length=64)
    reason: str | None = Field(None, max_length=2000)


class DecisionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    comment: str | None = Field(None, max_length=4000)


class RollbackCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to_version: str | None = Field(None, max_length=512, description="Default: the version the alias held before.")
    reason: str | None = Field(None, max_length=2000)


class PolicyChange(BaseModel):
    """The promotion policy's settings to change (those left out keep their value)."""

    model_config = ConfigDict(extra="forbid")

    approvals: int | None = None
    require_ship: bool | None = None
    require_forgetting_check: bool | None = None
    max_slice_gap: float | None = None
    max_memorization_rate: float | None = None
    exempt_aliases: list[str] | None = None


class CanaryChange(BaseModel):
    """The canary settings to change (those left out keep their value)."""

    model_config = ConfigDict(extra="forbid")

    auto_promote: bool | None = None
    alpha: float | None = None
    min_samples: int | None = None
    latency_tolerance: float | None = None


class ProjectChange(BaseModel):
    """The project settings to change; see `GET /v1/projects/current` for all of them."""

    model_config = ConfigDict(extra="forbid")

    intended_purpose: str | None = None
    provider: str | None = None
    promotion: PolicyChange | None = None
    canary: CanaryChange | None = None
    loop: LoopChange | None = None


NO_COMMENT = DecisionCreate()  # the body may be left out
TO_PREVIOUS = RollbackCreate()


class ProjectOut(BaseModel):
    name: str
    settings: ProjectSettings


def _version(shown: dict[str, Any]) -> dict[str, Any]:
    return {key: shown.get(key) for key in Version.model_fields} | {"aliases": shown.get("aliases", [])}


@router.get("/registry/models", response_model=VersionList)
def list_versions(me: Viewer, request: Request, model: str | None = None) -> dict:
    """Every version of the caller's project (of one model when `model` is given), newest first."""
    registry = Registry(_db(request))
    aliases: dict[str, list[str]] = {}
    for alias in Promotions(_db(request)).aliases(me.project, model):
        aliases.setdefault(alias["version"], []).append(alias["alias"])
    return {"data": [_version(v | {"aliases": aliases.get(v["name"], [])}) for v in registry.list(me.project)
                     if model is None or v["model"] == model]}


@router.get("/registry/models/{model}/versions/{version}", response_model=Version, responses=error_responses(404))
def show_version(me: Viewer, request: Request, model: str, version: str) -> dict:
    registry = Registry(_db(request))
    return _version(registry.show(registry.resolve(me.project, model, version), me.project))


@router.get("/registry/models/{model}/aliases", response_model=AliasList)
def list_aliases(me: Viewer, request: Request, model: str) -> dict:
    return {"data": Promotions(_db(request)).aliases(me.project, model)}


@router.get("/registry/models/{model}/history", response_model=AliasHistory)
def alias_history(me: Viewer, request: Request, model: str, alias: str | None = None) -> dict:
    """Every move of the model's aliases (or of one), oldest first."""
    return {"data": Promotions(_db(request)).history(me.project, model, alias)}


@router.post("/registry/models/{model}/promotions", response_model=Promotion,
             responses=error_responses(400, 403, 404, 409))
def request_promotion(me: Developer, request: Request, model: str, body: PromotionCreate) -> dict:
    """Ask to point an alias at a version: refused (409, with the reasons) when the project's policy fails,
    promoted at once when it needs no approval, else pending."""
    return Promotions(_db(request)).request(me.project, model, body.version, body.alias, actor=me.actor,
                                            reason=body.reason)


@router.get("/registry/promotions", response_model=PromotionList)
def list_promotions(me: Viewer, request: Request, model: str | None = None,
                    status: Literal["pending", "promoted", "rejected", "refused"] | None = None) -> dict:
    return {"data": Promotions(_db(request)).requests(me.project, model=model, status=status)}


@router.get("/registry/promotions/{request_id}", response_model=Promotion, responses=error_responses(404))
def get_promotion(me: Viewer, request: Request, request_id: str) -> dict:
    return Promotions(_db(request)).get_request(me.project, request_id)


@router.post("/registry/promotions/{request_id}/approve", response_model=Promotion,
             responses=error_responses(403, 404, 409))
def approve(me: Approver, request: Request, request_id: str, body: DecisionCreate = NO_COMMENT) -> dict:
    """Approve; refused (403) for the version's author. The last approval needed moves the alias."""
    return Promotions(_db(request)).approve(me.project, request_id, actor=me.actor, comment=body.comment)


@router.post("/registry/promotions/{request_id}/reject", response_model=Promotion,
             responses=error_responses(403, 404, 409))
def reject(me: Approver, request: Request, request_id: str, body: DecisionCreate = NO_COMMENT) -> dict:
    return Promotions(_db(request)).reject(me.project, request_id, actor=me.actor, comment=body.comment)


@router.post("/registry/models/{model}/aliases/{alias}/rollback", response_model=AliasMove,
             responses=error_responses(404, 409))
def rollback(me: Approver, request: Request, model: str, alias: str, body: RollbackCreate = TO_PREVIOUS) -> dict:
    """Point the alias back at the version it held before (or at `to_version`, which must have held it)."""
    return Promotions(_db(request)).rollback(me.project, model, alias, actor=me.actor, to_version=body.to_version,
                                             reason=body.reason)


@router.get("/projects/current", response_model=ProjectOut)
def current_project(me: Viewer, request: Request) -> dict:
    """The caller's project and its settings (intended purpose, provider, promotion policy)."""
    return {"name": me.project, "settings": Projects(_db(request)).settings(me.project)}


@router.patch("/projects/current", response_model=ProjectOut, responses=error_responses(400, 403))
def update_project(me: Admin, request: Request, body: ProjectChange) -> dict:
    """Change the caller's project's settings (only the keys sent; null resets one to its default); audited."""
    change = body.model_dump(exclude_unset=True)
    return {"name": me.project, "settings": Projects(_db(request)).update(me.project, change, actor=me.actor)}
