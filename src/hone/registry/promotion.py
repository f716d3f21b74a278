"""Aliases with history, and promotion gated by the project's policy and by approvers who did not train the version.

`request` checks the policy (SHIP against the alias's current version, forgetting within tolerance, slice gap and
memorization caps) and either refuses with the reasons or waits for approvals; `approve` by an approver who is not
the version's author counts one, and the last one needed moves the alias after checking the policy again. Every
move (promotion, rollback) is an append-only `alias_history` row and an audit entry in the same transaction, and
every refusal is audited too. Servers resolve `MODEL@ALIAS` on each request, so a move needs no restart.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from hone import audit
from hone.errors import ConflictError, ForbiddenError, NotFoundError, RequestError
from hone.registry.projects import Projects, PromotionPolicy
from hone.store import engine_for, session
from hone.store.tables import (
    AliasMove,
    Approval,
    ModelAlias,
    ModelVersion,
    PromotionRequest,
    VersionEvaluation,
    iso_utc,
    utc_now,
)

ALIAS_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
SHIP = "SHIP"


@dataclass(frozen=True)
class Check:
    """One rule of the promotion policy and whether the version passes it."""

    rule: str
    passed: bool
    detail: str


def check_alias_name(alias: str) -> str:
    if not ALIAS_NAME.match(alias):
        raise RequestError(f"alias {alias!r} is not valid: use letters, digits, '-' and '_', starting with a letter "
                           "(at most 64)", param="alias", code="invalid_alias")
    return alias


def _request_dict(request: PromotionRequest, approvals: list[Approval]) -> dict[str, Any]:
    return {"id": request.id, "object": "registry.promotion", "project": request.project, "model": request.model,
            "alias": request.alias, "version": request.version_name, "requested_by": request.requested_by,
            "reason": request.reason, "status": request.status, "checks": json.loads(request.checks_json),
            "baseline_version": request.baseline_version, "created_at": iso_utc(request.created_at),
            "decided_at": iso_utc(request.decided_at),
            "approvals": [{"actor": a.actor, "decision": a.decision, "comment": a.comment,
                           "created_at": iso_utc(a.created_at)} for a in approvals]}


def _move_dict(move: AliasMove) -> dict[str, Any]:
    return {"alias": move.alias, "action": move.action, "from_version": move.from_version,
            "to_version": move.to_version, "actor": move.actor, "reason": move.reason,
            "request_id": move.request_id, "created_at": iso_utc(move.created_at)}


def _evaluation_report(summary: dict) -> dict | None:
    """The full eval report a version's evaluation summary points to (None when it is gone from disk)."""
    path = summary.get("report_json")
    if not path or not Path(path).is_file():
        return None
    return json.loads(Path(path).read_text())


def latest_evaluation(db, version_name: str, against: str | None) -> VersionEvaluation | None:
    """The newest evaluation of `version_name` against `against` (a version name; None: the base model)."""
    return db.scalar(select(VersionEvaluation).where(VersionEvaluation.version_name == version_name,
                                                     VersionEvaluation.against_version.is_(None) if against is None
                                                     else VersionEvaluation.against_version == against)
                     .order_by(VersionEvaluation.created_at.desc(), VersionEvaluation.id.desc()).limit(1))


def _report_checks(policy: PromotionPolicy, report: dict | None, what: str) -> list[Check]:
    """The policy's rules that read the full eval report: forgetting, slice gap, memorization and canaries."""
    from hone.eval.verdict import forgetting_problems

    wanted = policy.require_forgetting_check or policy.max_slice_gap is not None or \
        policy.max_memorization_rate is not None
    if not wanted:
        return []
    if report is None:
        return [Check("report", False, f"the full report of {what} is no longer on disk: evaluate again")]
    candidate = (report.get("verdict") or {}).get("candidate")
    checks = []
    if policy.require_forgetting_check:
        forgetting = report.get("forgetting")
        problems = forgetting_problems(forgetting, candidate) if forgetting else ["forgetting was not measured"]
        checks.append(Check("forgetting", not problems, "; ".join(problems) or
                            "general ability held within the eval's tolerance"))
    if policy.max_slice_gap is not None:
        gap = ((report.get("slices") or {}).get("max_gap") or {}).get(candidate)
        if gap is None:
            checks.append(Check("slice_gap", False, "slices were not measured: name slice fields (slices.fields) "
                                "in the eval config"))
        else:
            checks.append(Check("slice_gap", gap["gap"] <= policy.max_slice_gap,
                                f"largest slice gap {gap['gap']:.1f} points ({gap['field']}: {gap['low']} vs "
                                f"{gap['high']}), cap {policy.max_slice_gap:g}"))
    if policy.max_memorization_rate is not None:
        memorization = report.get("memorization") or {}
        rate = (memorization.get("candidates") or {}).get(candidate, {}).get("rate")
        leaked = ((memorization.get("canaries") or {}).get("leaked") or {}).get(candidate, 0)
        if rate is None:
            checks.append(Check("memorization", False, "memorization was not measured: give the eval the "
                                "training file"))
        else:
            checks.append(Check("memorization", rate <= policy.max_memorization_rate and not leaked,
                                f"{rate:.1f}% of replies repeat the training data verbatim (cap "
                                f"{policy.max_memorization_rate:g}%)" + (f"; {leaked} canaries leaked" if leaked
                                                                         else "")))
    return checks


def policy_checks(db, policy: PromotionPolicy, version: ModelVersion, baseline: str | None) -> list[Check]:
    """Every rule of `policy` for `version` replacing `baseline` (the alias's current version; None: none yet,
    so the version is judged against the base model)."""
    against = f"the current version {baseline}" if baseline else "the base model"
    evaluation = latest_evaluation(db, version.name, baseline)
    if evaluation is None:
        how = (f"`hone registry evaluate {version.model} {version.version} --against {baseline}`" if baseline
               else "a fine-tuning job with its default evaluation on")
        return [Check("evaluation", False, f"version {version.version} has no evaluation against {against}: "
                      f"run {how}")]
    summary = json.loads(evaluation.summary_json)
    checks = []
    if policy.require_ship:
        reasons = "; ".join(summary.get("reasons") or [])
        checks.append(Check("verdict", evaluation.verdict == SHIP,
                            f"the evaluation against {against} says {evaluation.verdict}" +
                            (f": {reasons}" if reasons else "")))
    return checks + _report_checks(policy, _evaluation_report(summary), f"the evaluation against {against}")


class Promotions:
    """Aliases, their history and the promotion requests of every project; each call is scoped to one project."""

    def __init__(self, db_url: str | None = None):
        self.db_url = db_url
        self.engine = engine_for(db_url)

    # ---- lookups ----

    def version(self, db, project: str, model: str, version: str | int) -> ModelVersion:
        """A version by number (3, "3", "v3") or by its full name, within `project`'s `model`."""
        text = str(version)
        number = text.removeprefix("v")
        query = select(ModelVersion).where(ModelVersion.project == project)
        query = query.where(ModelVersion.model == model, ModelVersion.version == int(number)) if number.isdigit() \
            else query.where(ModelVersion.name == text)
        found = db.scalar(query)
        if found is None or found.model != model:
            raise NotFoundError(f"model {model!r} has no version {text!r} (or you do not have access to it)",
                                param="version", code="version_not_found")
        return found

    def alias_target(self, db, project: str, model: str, alias: str) -> str | None:
        """The version name `alias` of `model` points to, or None."""
        return db.scalar(select(ModelAlias.version_name).where(
            ModelAlias.project == project, ModelAlias.model == model, ModelAlias.alias == alias))

    def resolve_alias(self, project: str, model: str, alias: str) -> str:
        """The version `MODEL@ALIAS` stands for in `project`; NotFoundError when there is none."""
        with session(self.engine) as db:
            target = self.alias_target(db, project, model, alias)
        if target is None:
            raise NotFoundError(f"The model '{model}@{alias}' does not exist or you do not have access to it",
                                param="model", code="model_not_found")
        return target

    def aliases(self, project: str, model: str | None = None) -> list[dict[str, Any]]:
        with session(self.engine) as db:
            query = select(ModelAlias).where(ModelAlias.project == project).order_by(ModelAlias.model,
                                                                                     ModelAlias.alias)
            if model is not None:
                query = query.where(ModelAlias.model == model)
            return [{"model": a.model, "alias": a.alias, "version": a.version_name,
                     "updated_at": iso_utc(a.updated_at)} for a in db.scalars(query)]

    def history(self, project: str, model: str, alias: str | None = None) -> list[dict[str, Any]]:
        """Every move of the model's aliases (or of one), oldest first."""
        with session(self.engine) as db:
            query = select(AliasMove).where(AliasMove.project == project, AliasMove.model == model)
            if alias is not None:
                query = query.where(AliasMove.alias == alias)
            return [_move_dict(m) for m in db.scalars(query.order_by(AliasMove.id))]

    def requests(self, project: str, *, model: str | None = None, status: str | None = None) -> list[dict]:
        """Promotion requests, newest first."""
        with session(self.engine) as db:
            query = select(PromotionRequest).where(PromotionRequest.project == project)
            if model is not None:
                query = query.where(PromotionRequest.model == model)
            if status is not None:
                query = query.where(PromotionRequest.status == status)
            return [self._dict(db, r) for r in db.scalars(query.order_by(PromotionRequest.created_at.desc()))]

    def get_request(self, project: str, request_id: str) -> dict[str, Any]:
        with session(self.engine) as db:
            return self._dict(db, self._request(db, project, request_id))

    def _request(self, db, project: str, request_id: str) -> PromotionRequest:
        request = db.get(PromotionRequest, request_id)
        if request is None or request.project != project:
            raise NotFoundError(f"promotion request {request_id!r} does not exist or you do not have access to it",
                                param="request_id", code="promotion_not_found")
        return request

    def _dict(self, db, request: PromotionRequest) -> dict[str, Any]:
        approvals = db.scalars(select(Approval).where(Approval.request_id == request.id).order_by(Approval.id))
        return _request_dict(request, list(approvals))

    # ---- changes ----

    def request(self, project: str, model: str, version: str | int, alias: str, *, actor: str | None,
                reason: str | None = None) -> dict[str, Any]:
        """Ask to point `alias` at a version. Refused (ConflictError, and audited) when the policy fails; promoted at
        once when the policy asks no approvals or the alias is exempt; else pending approval."""
        check_alias_name(alias)
        policy = Projects(self.db_url).settings(project).promotion
        with session(self.engine) as db:
            chosen = self.version(db, project, model, version)
            current = self.alias_target(db, project, model, alias)
            if current == chosen.name:
                raise ConflictError(f"{model}@{alias} already points to version {chosen.version}", param="version",
                                    code="alias_unchanged")
            exempt = alias in policy.exempt_aliases
            checks = [] if exempt else policy_checks(db, policy, chosen, current)
            request = PromotionRequest(id=f"promo-{secrets.token_hex(8)}", project=project, model=model,
                                       alias=alias, version_name=chosen.name, requested_by=actor, reason=reason,
                                       status="pending", checks_json=json.dumps([asdict(c) for c in checks]),
                                       baseline_version=current, created_at=utc_now())
            db.add(request)
            failed = [c for c in checks if not c.passed]
            details = {"alias": alias, "version": chosen.version, "from_version": current, "reason": reason}
            if failed:
                request.status, request.decided_at = "refused", utc_now()
                self._audit(db, request, actor, "promotion.refused", details | {"failed": [c.detail for c in failed]})
            else:
                self._audit(db, request, actor, "promotion.requested", details)
                if exempt or policy.approvals == 0:
                    self._promote(db, request, actor)
            result = self._dict(db, request)
        if failed:
            raise ConflictError(f"promotion of {model} version {chosen.version} to {alias} refused by the project's "
                                "policy: " + "; ".join(c.detail for c in failed), param="version",
                                code="promotion_refused")
        return result

    def approve(self, project: str, request_id: str, *, actor: str, comment: str | None = None) -> dict[str, Any]:
        """One approval by `actor` (who must not be the version's author); the last one needed promotes."""
        return self._decide(project, request_id, actor, "approved", comment)

    def reject(self, project: str, request_id: str, *, actor: str, comment: str | None = None) -> dict[str, Any]:
        """Reject the request (it is closed; a new request is needed)."""
        return self._decide(project, request_id, actor, "rejected", comment)

    def _decide(self, project: str, request_id: str, actor: str, decision: str, comment: str | None) -> dict:
        policy = Projects(self.db_url).settings(project).promotion
        refusal = None
        with session(self.engine) as db:
            request = self._request(db, project, request_id)
            if request.status != "pending":
                raise ConflictError(f"promotion request {request_id} is {request.status}; only a pending request "
                                    "can be decided", param="request_id", code="promotion_closed")
            version = db.scalar(select(ModelVersion).where(ModelVersion.name == request.version_name))
            if version is not None and version.author and version.author == actor:
                refusal = ForbiddenError(f"{actor} created the job that trained version {version.version}; an "
                                         "approver who is not its author must decide", code="author_cannot_approve")
            elif db.scalar(select(Approval.id).where(Approval.request_id == request.id, Approval.actor == actor)):
                refusal = ConflictError(f"{actor} has already decided on {request_id}", code="already_decided")
            if refusal is not None:
                self._audit(db, request, actor, f"promotion.{decision.removesuffix('d')}_refused",
                            {"reason": refusal.message})
            else:
                db.add(Approval(request_id=request.id, actor=actor, decision=decision, comment=comment,
                                created_at=utc_now()))
                db.flush()
                self._audit(db, request, actor, f"promotion.{decision}", {"comment": comment})
                if decision == "rejected":
                    request.status, request.decided_at = "rejected", utc_now()
                elif self._approvals(db, request) >= policy.approvals:
                    self._promote_checked(db, request, policy, actor)
            result = self._dict(db, request)
        if refusal is not None:
            raise refusal
        return result

    def _approvals(self, db, request: PromotionRequest) -> int:
        return len(db.scalars(select(Approval.actor).where(Approval.request_id == request.id,
                                                           Approval.decision == "approved")).all())

    def _promote_checked(self, db, request: PromotionRequest, policy: PromotionPolicy, actor: str) -> None:
        """Promote after the last approval, unless the alias moved or the policy fails now (recorded as refused)."""
        current = self.alias_target(db, request.project, request.model, request.alias)
        version = db.scalar(select(ModelVersion).where(ModelVersion.name == request.version_name))
        if current != request.baseline_version:
            failed = [f"{request.model}@{request.alias} moved to {current} after the request: request again"]
        else:
            checks = [] if request.alias in policy.exempt_aliases else policy_checks(db, policy, version, current)
            request.checks_json = json.dumps([asdict(c) for c in checks])
            failed = [c.detail for c in checks if not c.passed]
        if failed:
            request.status, request.decided_at = "refused", utc_now()
            self._audit(db, request, actor, "promotion.refused", {"failed": failed})
            return
        self._promote(db, request, actor)

    def _promote(self, db, request: PromotionRequest, actor: str | None) -> None:
        request.status, request.decided_at = "promoted", utc_now()
        self._move(db, request.project, request.model, request.alias, request.version_name, actor, "promote",
                   request.reason, request.id)

    def rollback(self, project: str, model: str, alias: str, *, actor: str | None, to_version: str | int | None = None,
                 reason: str | None = None) -> dict[str, Any]:
        """Point `alias` back at the version it held before (or at `to_version`, which must have held it)."""
        with session(self.engine) as db:
            current = self.alias_target(db, project, model, alias)
            if current is None:
                raise NotFoundError(f"{model}@{alias} does not exist", param="alias", code="alias_not_found")
            moves = db.scalars(select(AliasMove).where(AliasMove.project == project, AliasMove.model == model,
                                                       AliasMove.alias == alias).order_by(AliasMove.id)).all()
            held = [m.to_version for m in moves if m.to_version]
            if to_version is not None:
                target = self.version(db, project, model, to_version).name
                if target not in held or target == current:
                    raise ConflictError(f"{model}@{alias} can only roll back to a version it held before (other "
                                        f"than the current one); promote version {to_version} instead",
                                        param="to_version", code="not_a_previous_version")
            else:
                target = next((m.from_version for m in reversed(moves) if m.to_version == current and m.from_version),
                              None)
                if target is None:
                    raise ConflictError(f"{model}@{alias} has no earlier version to roll back to", param="alias",
                                        code="nothing_to_roll_back")
            move = self._move(db, project, model, alias, target, actor, "rollback", reason, None)
            return _move_dict(move)

    def _move(self, db, project: str, model: str, alias: str, target: str, actor: str | None, action: str,
              reason: str | None, request_id: str | None) -> AliasMove:
        """Point the alias at `target`, append the history row and the audit entry."""
        row = db.scalar(select(ModelAlias).where(ModelAlias.project == project, ModelAlias.model == model,
                                                 ModelAlias.alias == alias))
        previous = row.version_name if row else None
        if row is None:
            db.add(ModelAlias(project=project, model=model, alias=alias, version_name=target, updated_at=utc_now()))
        else:
            row.version_name, row.updated_at = target, utc_now()
        move = AliasMove(project=project, model=model, alias=alias, action=action, from_version=previous,
                         to_version=target, actor=actor, reason=reason, request_id=request_id, created_at=utc_now())
        db.add(move)
        audit.record(db, project=project, actor=actor, action=f"alias.{'moved' if action == 'promote' else action}",
                     object_type="model_alias", object_id=f"{model}@{alias}",
                     details={"from_version": previous, "to_version": target, "reason": reason,
                              "request_id": request_id})
        db.flush()
        return move

    def _audit(self, db, request: PromotionRequest, actor: str | None, action: str, details: dict) -> None:
        audit.record(db, project=request.project, actor=actor, action=action, object_type="registry.promotion",
                     object_id=request.id, details={"model": request.model, "alias": request.alias,
                                                    "version_name": request.version_name} | details)


def record_evaluation(db, *, project: str, version_name: str, against: str | None, summary: dict,
                      actor: str | None) -> None:
    """Attach an evaluation to a version inside the caller's transaction (audited as `eval.verdict`)."""
    verdict = summary.get("verdict")
    db.add(VersionEvaluation(project=project, version_name=version_name, against_version=against, verdict=verdict,
                             summary_json=json.dumps(summary), actor=actor, created_at=utc_now()))
    audit.record(db, project=project, actor=actor, action="eval.verdict", object_type="model_version",
                 object_id=version_name, details={"against": against, "verdict": verdict,
                                                  "reasons": summary.get("reasons")})
