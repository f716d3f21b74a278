"""Canary and shadow splits of an alias: a share of `MODEL@ALIAS` traffic answered by a challenger version (canary),
or copied to it with its reply captured but never returned (shadow), the two arms compared live, and the split rolled
back or offered for promotion.

The comparison runs three one-sided tests, each asking "is the challenger worse?":
- format validity (replies keeping the model's output contract): Fisher's exact test on valid/invalid counts;
- rating (the latest feedback rating of each reply): Mann-Whitney U on the ratings (ordinal: thumbs or stars);
- latency: Mann-Whitney U of the challenger's latency_ms against the champion's times (1 + latency_tolerance), so
  only a slowdown beyond the tolerance counts.
The family-wise significance level (`canary.alpha`, default 0.01) is split over the three tests (Bonferroni: each at
alpha / 3). No test runs before each arm has `canary.min_samples` (default 30) observations; until then it reports
how many more each arm needs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

from sqlalchemy import func, select, update

from hone import audit
from hone.errors import ConflictError, NotFoundError, RequestError
from hone.monitor.contracts import OutputContract, format_valid
from hone.registry.projects import CanarySettings, Projects
from hone.registry.promotion import Promotions
from hone.store import engine_for, session
from hone.store.tables import AliasSplit, CapturedRequest, Feedback, ModelVersion, iso_utc, utc_now

log = logging.getLogger("hone.monitor")
ACTIVE_TTL_S = 2.0  # how long a server trusts its cached split: a stop or rollback elsewhere applies within this
TESTS = 3  # format validity, rating, latency: the Bonferroni divisor
Mode = Literal["canary", "shadow"]
Sticky = Literal["user", "conversation", "request"]
ARMS = {"canary": ("primary", "canary"), "shadow": ("primary", "shadow")}  # (champion arm, challenger arm)


@dataclass(frozen=True)
class ActiveSplit:
    """What the router needs of an active split, cached on the hot path."""

    id: str
    champion_version: str
    challenger_version: str
    mode: str
    weight: float
    sticky: str

    def challenger_takes(self, user: str | None = None, conversation: str | None = None) -> bool:
        """Whether this request goes to the challenger (canary) or is copied to it (shadow): a stable share `weight`
        of users or conversations (a hash of the key with the split id), or a random share of requests when the
        split is per request or the request carries no key."""
        key = user if self.sticky == "user" else conversation if self.sticky == "conversation" else None
        if key is None:
            return random.random() < self.weight
        digest = hashlib.sha256(f"{self.id}\0{key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.weight


def conversation_key(messages: list[dict]) -> str:
    """A conversation's identity for stickiness: the system prompt and the first user message (both stay the same
    as the conversation grows)."""
    system = next((m.get("content") or "" for m in messages if m.get("role") == "system"), "")
    first = next((m.get("content") or "" for m in messages if m.get("role") == "user"), "")
    return hashlib.sha256(json.dumps([system, first]).encode()).hexdigest()


@dataclass(frozen=True)
class ArmStats:
    """One arm's traffic since the split started."""

    arm: str
    version: str
    requests: int
    format_checked: int
    format_valid: int
    format_validity: float | None
    rated: int
    mean_rating: float | None
    latency_ms_median: float | None
    latency_ms_p95: float | None


@dataclass(frozen=True)
class ArmTest:
    """One one-sided test of "the challenger is worse"; `needed` is how many more observations each arm needs
    before it runs (0 once it has run)."""

    metric: Literal["format_validity", "rating", "latency"]
    test: str
    status: Literal["worse", "held", "needed", "not_applicable"]
    p_value: float | None
    alpha: float
    needed_champion: int
    needed_challenger: int
    detail: str

    @property
    def needed(self) -> int:
        return max(self.needed_champion, self.needed_challenger)


@dataclass(frozen=True)
class ArmComparison:
    """Champion arm vs challenger arm of a split, with the tests and what they mean for the split."""

    split_id: str
    champion: ArmStats
    challenger: ArmStats
    tests: list[ArmTest]
    family_alpha: float
    window_requests: int
    verdict: Literal["worse", "passed", "holding"]
    needed: int = 0  # challenger requests still needed to fill the window

    @property
    def worse(self) -> list[ArmTest]:
        return [t for t in self.tests if t.status == "worse"]


@dataclass(frozen=True)
class Split:
    """A traffic split of an alias, as stored."""

    id: str
    project: str
    model: str
    alias: str
    champion_version: str
    challenger_version: str
    mode: str
    weight: float
    sticky: str
    status: Literal["active", "rolled_back", "passed", "promoted", "ended"]
    window_requests: int
    reason: str | None
    actor: str | None
    created_at: str
    ended_at: str | None
    outcome: dict[str, Any] | None


@dataclass(frozen=True)
class CanaryDecision:
    """What `check` did with one split: rolled it back, passed it (with the promotion's outcome), or let it hold."""

    split: Split
    action: Literal["rolled_back", "passed", "promoted", "ended", "holding"]
    comparison: ArmComparison | None


def _split(row: AliasSplit) -> Split:
    settings = json.loads(row.settings_json or "{}")
    return Split(id=row.id, project=row.project, model=row.model, alias=row.alias,
                 champion_version=row.champion_version, challenger_version=row.challenger_version, mode=row.mode,
                 weight=row.weight, sticky=row.sticky, status=row.status,
                 window_requests=int(settings.get("window_requests", 200)), reason=settings.get("reason"),
                 actor=row.actor, created_at=iso_utc(row.created_at), ended_at=iso_utc(row.ended_at),
                 outcome=json.loads(row.outcome_json) if row.outcome_json else None)


class Canaries:
    """Alias splits of every project; each call is scoped to one project. Thread-safe."""

    def __init__(self, db_url: str | None = None, active_ttl_s: float = ACTIVE_TTL_S):
        self.db_url = db_url
        self.engine = engine_for(db_url)
        self.active_ttl_s = active_ttl_s
        self._active: dict[tuple[str, str, str], tuple[float, ActiveSplit | None]] = {}
        self._lock = threading.Lock()

    # ---- the hot path ----

    def active(self, project: str, model: str, alias: str) -> ActiveSplit | None:
        """The alias's active split (None: all traffic to the champion), read from the database at most once per
        `active_ttl_s` per alias."""
        key = (project, model, alias)
        now = time.monotonic()
        cached = self._active.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        with session(self.engine) as db:
            row = db.scalar(select(AliasSplit).where(AliasSplit.project == project, AliasSplit.model == model,
                                                     AliasSplit.alias == alias, AliasSplit.status == "active"))
            found = None if row is None else ActiveSplit(row.id, row.champion_version, row.challenger_version,
                                                         row.mode, row.weight, row.sticky)
        with self._lock:
            self._active[key] = (now + self.active_ttl_s, found)
        return found

    # ---- lookups ----

    def get(self, project: str, split_id: str) -> Split:
        """A split of `project`; NotFoundError for another project's."""
        with session(self.engine) as db:
            return _split(self._row(db, project, split_id))

    def list(self, project: str, *, model: str | None = None, alias: str | None = None,
             status: str | None = None) -> list[Split]:
        """The project's splits, newest first."""
        query = select(AliasSplit).where(AliasSplit.project == project)
        if model is not None:
            query = query.where(AliasSplit.model == model)
        if alias is not None:
            query = query.where(AliasSplit.alias == alias)
        if status is not None:
            query = query.where(AliasSplit.status == status)
        with session(self.engine) as db:
            return [_split(r) for r in db.scalars(query.order_by(AliasSplit.created_at.desc(), AliasSplit.id))]

    @staticmethod
    def _row(db, project: str, split_id: str) -> AliasSplit:
        row = db.get(AliasSplit, split_id)
        if row is None or row.project != project:
            raise NotFoundError(f"canary {split_id!r} does not exist or you do not have access to it",
                                param="split_id", code="canary_not_found")
        return row

    # ---- changes ----

    def start(self, project: str, model: str, alias: str, challenger: str | int, *, mode: Mode = "canary",
              weight: float = 0.1, sticky: Sticky = "user", window_requests: int = 200, actor: str | None,
              reason: str | None = None) -> Split:
        """Split `MODEL@ALIAS` between its current version (the champion) and `challenger` (a version number or
        name of the same model, on the same base): canary sends a share `weight` of requests to the challenger,
        shadow copies that share to it and captures its replies without returning them. One active split per
        alias (ConflictError otherwise); audited `canary.started`."""
        if mode not in ARMS:
            raise RequestError(f"mode {mode!r} is not canary or shadow", param="mode")
        if sticky not in ("user", "conversation", "request"):
            raise RequestError(f"sticky {sticky!r} is not user, conversation or request", param="sticky")
        if not (0 < weight < 1 or (mode == "shadow" and weight == 1)):
            raise RequestError(f"weight {weight:g} must be above 0 and below 1 (a shadow may copy all traffic: 1)",
                               param="weight")
        settings = Projects(self.db_url).settings(project).canary
        if window_requests < settings.min_samples:
            raise RequestError(f"window_requests {window_requests} is below the {settings.min_samples} observations "
                               "each test needs (canary.min_samples)", param="window_requests")
        promotions = Promotions(self.db_url)
        with session(self.engine) as db:
            champion_name = promotions.alias_target(db, project, model, alias)
            if champion_name is None:
                raise NotFoundError(f"{model}@{alias} does not exist: promote a version to it first",
                                    param="alias", code="alias_not_found")
            chosen = promotions.version(db, project, model, challenger)
            champion = db.scalar(select(ModelVersion).where(ModelVersion.name == champion_name))
            if chosen.name == champion_name:
                raise ConflictError(f"version {chosen.version} is already {model}@{alias}; name another challenger",
                                    param="challenger", code="challenger_is_champion")
            if champion is not None and chosen.base_fingerprint != champion.base_fingerprint:
                raise ConflictError(f"version {chosen.version} was trained on another base ({chosen.base_model}) "
                                    f"than {model}@{alias} ({champion.base_model}); one server cannot split them",
                                    param="challenger", code="other_base")
            existing = db.scalar(select(AliasSplit.id).where(AliasSplit.project == project, AliasSplit.model == model,
                                                             AliasSplit.alias == alias, AliasSplit.status == "active"))
            if existing is not None:
                raise ConflictError(f"{model}@{alias} already has an active split ({existing}); stop it first",
                                    param="alias", code="split_exists")
            row = AliasSplit(id=f"canary-{secrets.token_hex(8)}", project=project, model=model, alias=alias,
                             champion_version=champion_name, challenger_version=chosen.name, mode=mode,
                             weight=float(weight), sticky=sticky, status="active", actor=actor, created_at=utc_now(),
                             settings_json=json.dumps({"window_requests": window_requests, "reason": reason,
                                                       **settings.model_dump(exclude={"auto_promote"})}))
            db.add(row)
            audit.record(db, project=project, actor=actor, action="canary.started", object_type="alias_split",
                         object_id=row.id, details={"model": model, "alias": alias, "champion": champion_name,
                                                    "challenger": chosen.name, "mode": mode, "weight": float(weight),
                                                    "sticky": sticky, "window_requests": window_requests,
                                                    "reason": reason})
            db.flush()
            started = _split(row)
        self._forget(project, model, alias)
        return started

    def stop(self, project: str, split_id: str, *, actor: str | None, reason: str | None = None) -> Split:
        """End an active split by hand: all traffic back to the champion; audited `canary.stopped`."""
        if not self._transition(project, split_id, "ended", actor, "canary.stopped",
                                {"decision": "stopped", "detail": reason or "stopped by hand"}):
            raise ConflictError(f"canary {split_id} is not active ({self.get(project, split_id).status})",
                                code="canary_not_active")
        return self.get(project, split_id)

    def _transition(self, project: str, split_id: str, status: str, actor: str | None, action: str,
                    outcome: dict[str, Any]) -> bool:
        """Move an active split to `status` with its outcome and audit entry in one transaction; False when it was
        no longer active (another worker decided first)."""
        with session(self.engine) as db:
            row = self._row(db, project, split_id)
            moved = db.execute(update(AliasSplit).where(AliasSplit.id == split_id, AliasSplit.status == "active")
                               .values(status=status, ended_at=utc_now(), outcome_json=json.dumps(outcome)))
            if moved.rowcount != 1:
                return False
            audit.record(db, project=project, actor=actor, action=action, object_type="alias_split",
                         object_id=split_id, details={"model": row.model, "alias": row.alias,
                                                     "champion": row.champion_version,
                                                     "challenger": row.challenger_version, **outcome})
            model, alias = row.model, row.alias
        self._forget(project, model, alias)
        return True

    def _forget(self, project: str, model: str, alias: str) -> None:
        with self._lock:
            self._active.pop((project, model, alias), None)

    # ---- comparison and decisions ----

    def compare(self, project: str, split_id: str) -> ArmComparison:
        """The champion arm against the challenger arm, from the traffic captured since the split started."""
        with session(self.engine) as db:
            row = self._row(db, project, split_id)
            split = _split(row)
            settings = CanarySettings.model_validate({k: v for k, v in json.loads(row.settings_json).items()
                                                      if k in CanarySettings.model_fields})
            contract = Projects(self.db_url).settings(project, db).monitor.contracts.get(split.model)
            champion_arm, challenger_arm = ARMS[split.mode]
            champion = _observations(db, row, champion_arm, split.champion_version)
            challenger = _observations(db, row, challenger_arm, split.challenger_version)
        return compare_arms(split, champion, challenger, contract, settings)

    def check(self, project: str, split_id: str, *, actor: str | None, note: str | None = None) -> CanaryDecision:
        """Decide one active split: roll it back when the challenger is significantly worse on any test; pass it
        once the challenger has answered `window_requests` requests and none is worse (then ask for its promotion,
        which the project's policy decides); else let it hold. A split whose alias moved meanwhile ends. `note`
        (why the check ran now) is kept with a decision."""
        split = self.get(project, split_id)
        if split.status != "active":
            return CanaryDecision(split, "holding", None)
        current = self._alias_target(split)
        if current != split.champion_version:
            self._transition(project, split_id, "ended", actor, "canary.ended",
                             {"decision": "ended", "detail": f"{split.model}@{split.alias} moved to {current} "
                              "during the split"})
            return CanaryDecision(self.get(project, split_id), "ended", None)
        comparison = self.compare(project, split_id)
        figures = {"tests": [_test_figures(t) for t in comparison.tests],
                   "requests": {"champion": comparison.champion.requests,
                                "challenger": comparison.challenger.requests}} | ({"note": note} if note else {})
        if comparison.verdict == "worse":
            detail = "; ".join(t.detail for t in comparison.worse)
            self._transition(project, split_id, "rolled_back", actor, "canary.rolled_back",
                             {"decision": "rolled_back", "detail": detail, **figures})
            return CanaryDecision(self.get(project, split_id), "rolled_back", comparison)
        if comparison.verdict == "holding":
            return CanaryDecision(split, "holding", comparison)
        detail = (f"the challenger held for {comparison.challenger.requests} requests (window "
                  f"{split.window_requests}); no test found it worse")
        if not self._transition(project, split_id, "passed", actor, "canary.passed",
                                {"decision": "passed", "detail": detail, **figures}):
            return CanaryDecision(self.get(project, split_id), "holding", comparison)
        promotion = self._offer(split, actor)
        action = "promoted" if promotion["status"] == "promoted" else "passed"
        with session(self.engine) as db:
            row = self._row(db, project, split_id)
            row.outcome_json = json.dumps({**json.loads(row.outcome_json), "promotion": promotion})
            if action == "promoted":
                row.status = "promoted"
                audit.record(db, project=project, actor=actor, action="canary.promoted", object_type="alias_split",
                             object_id=split_id, details={"model": split.model, "alias": split.alias,
                                                         "challenger": split.challenger_version,
                                                         "request_id": promotion.get("request_id")})
        return CanaryDecision(self.get(project, split_id), action, comparison)

    def _alias_target(self, split: Split) -> str | None:
        with session(self.engine) as db:
            return Promotions(self.db_url).alias_target(db, split.project, split.model, split.alias)

    def _offer(self, split: Split, actor: str | None) -> dict[str, Any]:
        """Ask for the challenger's promotion through the project's policy, unless the project does not allow
        automatic promotion and the policy would move the alias at once (no approvals): then it is only offered."""
        settings = Projects(self.db_url).settings(split.project)
        policy = settings.promotion
        moves_at_once = policy.approvals == 0 or split.alias in policy.exempt_aliases
        command = (f"hone registry promote {split.model} {split.challenger_version} --alias {split.alias} "
                   f"--project {split.project}")
        if moves_at_once and not settings.canary.auto_promote:
            return {"status": "offered", "request_id": None,
                    "message": f"the project does not promote automatically (canary.auto_promote): run `{command}`"}
        try:
            request = Promotions(self.db_url).request(
                split.project, split.model, split.challenger_version, split.alias, actor=actor,
                reason=f"canary {split.id} passed")
        except RequestError as refused:  # the policy's refusal (409), or the alias already points there
            return {"status": "refused", "request_id": None, "message": refused.message}
        return {"status": request["status"], "request_id": request["id"],
                "message": "awaiting approval" if request["status"] == "pending" else None}

    def check_all(self, *, actor: str | None, project: str | None = None) -> list[CanaryDecision]:
        """`check` every active split (of one project, or of all)."""
        query = select(AliasSplit.project, AliasSplit.id).where(AliasSplit.status == "active")
        if project is not None:
            query = query.where(AliasSplit.project == project)
        with session(self.engine) as db:
            active = db.execute(query.order_by(AliasSplit.created_at)).all()
        decisions = []
        for split_project, split_id in active:
            try:
                decisions.append(self.check(split_project, split_id, actor=actor))
            except Exception:  # one split's failure must not stop the others' checks
                log.exception("checking canary %s failed", split_id)
        return decisions


@dataclass(frozen=True)
class Observation:
    """One captured reply of an arm: its text, latency and latest rating."""

    text: str
    latency_ms: float | None
    rating: int | None


def _observations(db, split: AliasSplit, arm: str, version: str) -> list[Observation]:
    latest = (select(Feedback.response_id, func.max(Feedback.id).label("feedback_id"))
              .group_by(Feedback.response_id).subquery())
    query = (select(CapturedRequest.response_text, CapturedRequest.latency_ms, Feedback.rating)
             .outerjoin(latest, latest.c.response_id == CapturedRequest.response_id)
             .outerjoin(Feedback, Feedback.id == latest.c.feedback_id)
             .where(CapturedRequest.project == split.project, CapturedRequest.alias == split.alias,
                    CapturedRequest.model == f"{split.model}@{split.alias}", CapturedRequest.arm == arm,
                    CapturedRequest.served_version == version, CapturedRequest.created_at >= split.created_at))
    return [Observation(text, latency, rating) for text, latency, rating in db.execute(query)]


def _stats(arm: str, version: str, rows: list[Observation], contract: OutputContract | None) -> ArmStats:
    import numpy as np

    checked = [format_valid(r.text, contract) for r in rows] if contract is not None and contract.defined else []
    ratings = [r.rating for r in rows if r.rating is not None]
    latencies = [r.latency_ms for r in rows if r.latency_ms is not None]
    return ArmStats(arm=arm, version=version, requests=len(rows), format_checked=len(checked),
                    format_valid=sum(bool(v) for v in checked),
                    format_validity=round(sum(bool(v) for v in checked) / len(checked), 4) if checked else None,
                    rated=len(ratings), mean_rating=round(float(np.mean(ratings)), 3) if ratings else None,
                    latency_ms_median=round(float(np.median(latencies)), 1) if latencies else None,
                    latency_ms_p95=round(float(np.percentile(latencies, 95)), 1) if latencies else None)


def _short(a: int, b: int, minimum: int) -> tuple[int, int]:
    return max(0, minimum - a), max(0, minimum - b)


def compare_arms(split: Split, champion_rows: list[Observation], challenger_rows: list[Observation],
                 contract: OutputContract | None, settings: CanarySettings) -> ArmComparison:
    """The three one-sided tests of "the challenger is worse" on the two arms' observations (see the module)."""
    from scipy.stats import fisher_exact, mannwhitneyu

    alpha = settings.alpha / TESTS
    minimum = settings.min_samples
    champion = _stats("champion", split.champion_version, champion_rows, contract)
    challenger = _stats("challenger", split.challenger_version, challenger_rows, contract)
    tests = []

    fisher = "Fisher's exact test, one-sided (challenger's share of valid replies lower)"
    if contract is None or not contract.defined:
        tests.append(ArmTest("format_validity", fisher, "not_applicable", None, alpha, 0, 0,
                             f"no output contract for {split.model} (monitor.contracts)"))
    else:
        short = _short(champion.format_checked, challenger.format_checked, minimum)
        if any(short):
            tests.append(ArmTest("format_validity", fisher, "needed", None, alpha, *short,
                                 _needed_detail("format validity", short)))
        else:
            table = [[challenger.format_valid, challenger.format_checked - challenger.format_valid],
                     [champion.format_valid, champion.format_checked - champion.format_valid]]
            p = float(fisher_exact(table, alternative="less").pvalue)
            tests.append(ArmTest("format_validity", fisher, "worse" if p < alpha else "held", _p(p), alpha, 0, 0,
                                 f"format validity {challenger.format_validity:.1%} (challenger) vs "
                                 f"{champion.format_validity:.1%} (champion), p={p:.2g}"))

    mwu_rating = "Mann-Whitney U, one-sided (challenger's ratings lower)"
    short = _short(champion.rated, challenger.rated, minimum)
    if any(short):
        tests.append(ArmTest("rating", mwu_rating, "needed", None, alpha, *short,
                             _needed_detail("rating", short, "rated replies")))
    else:
        p = float(mannwhitneyu([r.rating for r in challenger_rows if r.rating is not None],
                               [r.rating for r in champion_rows if r.rating is not None], alternative="less").pvalue)
        tests.append(ArmTest("rating", mwu_rating, "worse" if p < alpha else "held", _p(p), alpha, 0, 0,
                             f"mean rating {challenger.mean_rating:g} (challenger) vs {champion.mean_rating:g} "
                             f"(champion), p={p:.2g}"))

    tolerance = settings.latency_tolerance
    mwu_latency = (f"Mann-Whitney U, one-sided (challenger's latency above the champion's + "
                   f"{tolerance:.0%})")
    slow = [r.latency_ms for r in challenger_rows if r.latency_ms is not None]
    fast = [r.latency_ms * (1 + tolerance) for r in champion_rows if r.latency_ms is not None]
    short = _short(len(fast), len(slow), minimum)
    if any(short):
        tests.append(ArmTest("latency", mwu_latency, "needed", None, alpha, *short,
                             _needed_detail("latency", short)))
    else:
        p = float(mannwhitneyu(slow, fast, alternative="greater").pvalue)
        tests.append(ArmTest("latency", mwu_latency, "worse" if p < alpha else "held", _p(p), alpha, 0, 0,
                             f"median latency {challenger.latency_ms_median:g} ms (challenger) vs "
                             f"{champion.latency_ms_median:g} ms (champion), p={p:.2g}"))

    needed = max(0, split.window_requests - challenger.requests)
    # Ratings come only when users give them: too few of them never blocks a pass, the other tests must have run.
    blocking = [t for t in tests if t.status == "needed" and t.metric != "rating"]
    if any(t.status == "worse" for t in tests):
        verdict = "worse"
    elif needed == 0 and not blocking:
        verdict = "passed"
    else:
        verdict = "holding"
    return ArmComparison(split_id=split.id, champion=champion, challenger=challenger, tests=tests,
                         family_alpha=settings.alpha, window_requests=split.window_requests, verdict=verdict,
                         needed=needed)


def _p(p: float) -> float:
    return float(f"{p:.4g}")


def _needed_detail(what: str, short: tuple[int, int], unit: str = "replies") -> str:
    return (f"{what}: not tested yet; {short[0]} more champion and {short[1]} more challenger {unit} needed")


def _test_figures(test: ArmTest) -> dict[str, Any]:
    figures = asdict(test)
    return {k: figures[k] for k in ("metric", "status", "p_value", "alpha", "detail")}
