"""`/v1/registry/...` and `/v1/projects/current`: versions with their lineage, model card and Annex IV technical
documentation, aliases with their history, gated promotions, approvals, rollbacks and the project's settings, each
scoped to the caller's project (another project's objects answer 404). No answer names a server path: a base model
or folder given as a path is shown by its last name.

Reading is for every role; asking for a promotion needs a developer; approving, rejecting and rolling back need an
approver (who did not train the version); changing the project's settings needs an admin.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import PurePath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from hone.api.auth import Admin, Approver, Developer, Viewer
from hone.api.errors import error_responses
from hone.home import hone_home
from hone.monitor.loop_settings import LoopChange
from hone.registry.card import eval_figures, model_card
from hone.registry.document import technical_documentation
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


class DatasetLink(BaseModel):
    """Where the version's training data came from: the uploaded file (id, name, sha256) or the prepared dataset."""

    stage: Literal["dataset"] = "dataset"
    training_file: str | None = None
    filename: str | None = None
    sha256: str | None = None
    dataset_id: str | None = None
    replay_examples: int | None = None
    replay_fingerprint: str | None = None


class JobLink(BaseModel):
    """The fine-tuning job that trained the version (none for a version registered by hand)."""

    stage: Literal["job"] = "job"
    id: str | None = None
    status: str | None = None
    created_at: str | None = None
    finished_at: str | None = None


class RunLink(BaseModel):
    """The training run: on which base (and the fingerprint of its weights), with which method, how far."""

    stage: Literal["run"] = "run"
    base_model: str
    base_fingerprint: str
    method: str | None = None
    steps: int | None = None
    tokens: int | None = None
    final_train_loss: float | None = None


class WeightsLink(BaseModel):
    """The weights the run produced and the job's checkpoints, by name."""

    stage: Literal["weights"] = "weights"
    folder: str = Field(description="The weights folder's name (adapter or model), never its place on the server.")
    checkpoints: list[str] = []


class Evaluation(BaseModel):
    """One evaluation the version carries: its verdict against the base (`against_version` null) or a version."""

    id: str = Field(description="Its id in GET /v1/evaluations (eval-N).")
    against_version: str | None = None
    verdict: str | None = None
    reasons: list[str] = []
    actor: str | None = None
    created_at: str


class EvalLink(BaseModel):
    """The evaluation after training (its verdict) and every evaluation recorded for the version since."""

    stage: Literal["eval"] = "eval"
    verdict: str | None = None
    report: bool = Field(False, description="Whether the evaluation after training left a report.")
    evaluations: list[Evaluation] = []


LineageLink = Annotated[DatasetLink | JobLink | RunLink | WeightsLink | EvalLink, Field(discriminator="stage")]


class Lineage(BaseModel):
    """A version's chain, dataset -> job -> run -> weights -> eval, with ids and fingerprints but no server path."""

    object: Literal["registry.lineage"] = "registry.lineage"
    name: str
    model: str
    version: int
    author: str | None = None
    lineage: list[LineageLink]


class CardFigure(BaseModel):
    """One figure of the card's model-index: a metric of the fine-tuned model and its change with the 95% CI."""

    metric: str
    value: float | None = None
    baseline: str | None = None
    delta: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    primary: bool = False


class CardMetadata(BaseModel):
    """The card's YAML metadata, what hub tools read."""

    model_name: str
    base_model: str | None = None
    base_model_relation: str | None = None
    library_name: str | None = None
    license: str | None = None
    datasets: list[str] = []
    pipeline_tag: str | None = None
    tags: list[str] = []
    eval_results: list[CardFigure] = []


class ModelCard(BaseModel):
    """A version's Hugging Face model card (README.md), with no server path in it."""

    object: Literal["registry.model_card"] = "registry.model_card"
    name: str
    markdown: str = Field(description="The whole card: its YAML metadata block, then the body.")
    metadata: CardMetadata


class TechnicalDocument(BaseModel):
    """A version's EU AI Act Annex IV technical documentation, with no server path in it."""

    object: Literal["registry.document"] = "registry.document"
    name: str
    markdown: str


# An absolute path's folders: what is left of a server path the known ones missed (not a URL's '//' or 'a/b').
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~\\-])(?:/[^\s/`'\"|,;()\[\]<>]+){2,}/?")


def public_name(value: str) -> str:
    """A base model or folder as a client may see it: a server path becomes its last name, a catalog name stays."""
    return PurePath(value).name if value.startswith(("/", "~")) else value


def _server_paths(value: Any) -> set[str]:
    """Every absolute path a version's record holds (run, weights, base, data, report), at any depth."""
    if isinstance(value, dict):
        return set().union(*(_server_paths(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_server_paths(v) for v in value))
    return {value} if isinstance(value, str) and value.startswith("/") and len(value) > 1 else set()


def without_paths(text: str, version: dict[str, Any]) -> str:
    """Text about a version with each server path replaced by its last name ($HONE_HOME by that word)."""
    for path in sorted(_server_paths(version), key=len, reverse=True):
        text = text.replace(path, PurePath(path).name)
    text = text.replace(str(hone_home()), "$HONE_HOME")
    return _ABSOLUTE_PATH.sub(lambda match: PurePath(match.group(0)).name, text)


def _lineage(shown: dict[str, Any]) -> list[dict[str, Any]]:
    """The lineage of `Registry.show` with the run and weights folders named, not placed."""
    links = {link["stage"]: link for link in shown["lineage"]}
    metrics = shown.get("metrics") or {}
    evaluations = [{"id": e["id"], "against_version": e["against_version"], "verdict": e["verdict"],
                    "actor": e["actor"], "created_at": e["created_at"],
                    "reasons": [without_paths(str(r), shown) for r in (e["summary"] or {}).get("reasons") or []]}
                   for e in shown.get("evaluations", [])]
    return [
        links["dataset"], links["job"],
        {"stage": "run", "base_model": public_name(shown["base_model"]), "base_fingerprint": shown["base_fingerprint"],
         "method": links["run"].get("method")} | {key: metrics.get(key) for key in ("steps", "tokens",
                                                                                   "final_train_loss")},
        {"stage": "weights", "folder": PurePath(shown["weights_dir"]).name,
         "checkpoints": links["weights"]["checkpoints"]},
        links["eval"] | {"evaluations": evaluations},
    ]


def _shown(request: Request, project: str, model: str, version: str) -> dict[str, Any]:
    """One version of the caller's project as `Registry.show` gives it (404 for another project's)."""
    registry = Registry(_db(request))
    return registry.show(registry.resolve(project, model, version), project)


def _version(shown: dict[str, Any]) -> dict[str, Any]:
    return ({key: shown.get(key) for key in Version.model_fields}
            | {"aliases": shown.get("aliases", []), "base_model": public_name(shown["base_model"])})


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
    return _version(_shown(request, me.project, model, version))


@router.get("/registry/models/{model}/versions/{version}/lineage", response_model=Lineage,
            responses=error_responses(404))
def version_lineage(me: Viewer, request: Request, model: str, version: str) -> dict:
    """The version's chain: the data it trained on, its job, its run, its weights and its evaluations."""
    shown = _shown(request, me.project, model, version)
    return {key: shown[key] for key in ("name", "model", "version", "author")} | {"lineage": _lineage(shown)}


@router.get("/registry/models/{model}/versions/{version}/card", response_model=ModelCard,
            responses=error_responses(404))
def version_card(me: Viewer, request: Request, model: str, version: str) -> dict:
    """The version's model card (the README.md the worker writes next to its weights), as Markdown and metadata."""
    shown = _shown(request, me.project, model, version)
    card = model_card(shown | {"base_model": public_name(shown["base_model"])})
    data = card.data
    metadata = {"model_name": data.model_name, "base_model": data.base_model, "license": data.license,
                "base_model_relation": data.base_model_relation, "library_name": data.library_name,
                "datasets": data.datasets or [], "pipeline_tag": data.pipeline_tag, "tags": data.tags or [],
                "eval_results": [asdict(figure) for figure in eval_figures(shown)]}
    return {"name": shown["name"], "markdown": without_paths(str(card), shown), "metadata": metadata}


@router.get("/registry/models/{model}/versions/{version}/document", response_model=TechnicalDocument,
            responses=error_responses(404))
def version_document(me: Viewer, request: Request, model: str, version: str) -> dict:
    """The version's EU AI Act Annex IV technical documentation (`hone registry document`), as Markdown."""
    shown = _shown(request, me.project, model, version)
    markdown = technical_documentation(shown["name"], me.project, _db(request))
    return {"name": shown["name"], "markdown": without_paths(markdown, shown)}


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
