"""hone's tables: API keys, captured traffic and feedback, files, fine-tuning jobs and the model registry."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from hone.store.base import Base


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso_utc(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC; SQLite hands datetimes back without their time zone."""
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


DEFAULT_PROJECT = "default"


def project_column() -> Mapped[str]:
    """The project an object belongs to; a key of one project never sees another project's objects."""
    return mapped_column(String(64), default=DEFAULT_PROJECT, server_default=DEFAULT_PROJECT, index=True)


class ApiKey(Base):
    """A server API key: only its salted scrypt hash is stored, plus a short prefix to find it by."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    project: Mapped[str] = project_column()
    # viewer < developer < approver < admin; keys from before roles keep the full access they had.
    role: Mapped[str] = mapped_column(String(16), default="developer", server_default="admin")
    name: Mapped[str] = mapped_column(String(64), index=True)
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    salt: Mapped[str] = mapped_column(String(64))
    key_hash: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class CapturedRequest(Base):
    """One served request and its answer, with PII already masked in both."""

    __tablename__ = "captured_requests"

    id: Mapped[int] = mapped_column(primary_key=True)
    project: Mapped[str] = project_column()
    response_id: Mapped[str] = mapped_column(String(128), unique=True)
    model: Mapped[str] = mapped_column(String(256), index=True)
    request_json: Mapped[str] = mapped_column(Text)
    response_text: Mapped[str] = mapped_column(Text)
    usage_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now, index=True)
    served_version: Mapped[str | None] = mapped_column(String(512), default=None, index=True)  # what answered
    alias: Mapped[str | None] = mapped_column(String(64), default=None)  # the alias the request named
    arm: Mapped[str | None] = mapped_column(String(16), default=None)  # primary | canary | shadow
    latency_ms: Mapped[float | None] = mapped_column(Float, default=None)
    finish_reason: Mapped[str | None] = mapped_column(String(16), default=None)  # stop | length
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, default=None)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, default=None)


class Feedback(Base):
    """A rating and/or corrected answer for a captured response; the latest one counts."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(primary_key=True)
    response_id: Mapped[str] = mapped_column(ForeignKey("captured_requests.response_id", ondelete="CASCADE"),
                                             index=True)
    rating: Mapped[int | None] = mapped_column(Integer, default=None)
    correction: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)


class StoredFile(Base):
    """An uploaded file (`file-...`): its bytes live once per sha256 under $HONE_HOME/files."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project: Mapped[str] = project_column()
    purpose: Mapped[str] = mapped_column(String(32), index=True)
    filename: Mapped[str] = mapped_column(String(256))
    bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16))  # processed | error
    format: Mapped[str | None] = mapped_column(String(32), default=None)
    examples: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[int] = mapped_column(Integer, default=0)
    warnings: Mapped[int] = mapped_column(Integer, default=0)
    validation_json: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now, index=True)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class FineTuningJob(Base):
    """A fine-tuning job (`ftjob-...`) as OpenAI's API shows it, plus what a worker needs to run and resume it."""

    __tablename__ = "fine_tuning_jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project: Mapped[str] = project_column()
    model: Mapped[str] = mapped_column(String(256))  # the base as the client named it
    base_model: Mapped[str] = mapped_column(Text)  # the base it resolved to (catalog name or folder)
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64), default=None)
    suffix: Mapped[str | None] = mapped_column(String(64), default=None)
    seed: Mapped[int] = mapped_column(Integer)
    metadata_json: Mapped[str] = mapped_column(Text, default="{}")
    method_json: Mapped[str] = mapped_column(Text)  # OpenAI's method object, "auto" values resolved once known
    hone_json: Mapped[str] = mapped_column(Text, default="{}")  # hone's own settings (extra_body hone)
    status: Mapped[str] = mapped_column(String(24), index=True)
    error_json: Mapped[str | None] = mapped_column(Text, default=None)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(512), default=None)
    trained_tokens: Mapped[int | None] = mapped_column(Integer, default=None)
    result_files_json: Mapped[str] = mapped_column(Text, default="[]")
    estimated_finish: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now, index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    # What a worker asked to happen next to a running job: cancel or pause (None: keep going).
    requested: Mapped[str | None] = mapped_column(String(16), default=None)
    worker_id: Mapped[str | None] = mapped_column(String(128), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    run_dir: Mapped[str | None] = mapped_column(Text, default=None)
    created_by: Mapped[str | None] = mapped_column(String(128), default=None)  # the actor who created it
    evaluation_json: Mapped[str | None] = mapped_column(Text, default=None)  # the verdict of the eval after training


class JobEvent(Base):
    """One event of a job (`ftevent-...`); `seq` orders them (newest first in the API)."""

    __tablename__ = "fine_tuning_job_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), index=True)
    level: Mapped[str] = mapped_column(String(8), default="info")
    message: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(String(16), default="message")  # message | metrics
    data_json: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)


class JobCheckpoint(Base):
    """A checkpoint (`ftckpt_...`) of a job, usable as a model under `...:ckpt-step-N`."""

    __tablename__ = "fine_tuning_job_checkpoints"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    fine_tuned_model_checkpoint: Mapped[str] = mapped_column(String(512), index=True)
    metrics_json: Mapped[str] = mapped_column(Text, default="{}")
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)


class ModelVersion(Base):
    """A registered fine-tuned model and its lineage: data -> job -> run -> adapter -> eval."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("project", "model", "version", name="uq_model_versions_project_model_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project: Mapped[str] = project_column()
    name: Mapped[str] = mapped_column(String(512), unique=True)
    base_model: Mapped[str] = mapped_column(Text)
    base_fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    job_id: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    training_file_sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    dataset_id: Mapped[str | None] = mapped_column(String(64), default=None)
    config_json: Mapped[str] = mapped_column(Text, default="{}")
    metrics_json: Mapped[str] = mapped_column(Text, default="{}")
    eval_json: Mapped[str | None] = mapped_column(Text, default=None)
    verdict: Mapped[str | None] = mapped_column(String(32), default=None)
    run_dir: Mapped[str] = mapped_column(Text)
    weights_dir: Mapped[str] = mapped_column(Text)  # RUN_DIR/adapter, or RUN_DIR/model for method full
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now, index=True)
    model: Mapped[str] = mapped_column(String(256), default="-", server_default="-", index=True)  # job suffix or base
    version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # 1, 2, ... within its model
    author: Mapped[str | None] = mapped_column(String(128), default=None)  # who created its job


class Project(Base):
    """A project and its settings (intended purpose, promotion policy); projects without a row use the defaults."""

    __tablename__ = "projects"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    settings_json: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)


class ModelAlias(Base):
    """Where an alias (champion, staging, ...) of a model points now; every move is also in `alias_history`."""

    __tablename__ = "model_aliases"
    __table_args__ = (UniqueConstraint("project", "model", "alias", name="uq_model_aliases_project_model_alias"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project: Mapped[str] = mapped_column(String(64), default=DEFAULT_PROJECT, server_default=DEFAULT_PROJECT)
    model: Mapped[str] = mapped_column(String(256))
    alias: Mapped[str] = mapped_column(String(64))
    version_name: Mapped[str] = mapped_column(String(512))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)


class AliasMove(Base):
    """One move of an alias (append-only): promote, rollback or remove, by whom, from which version, why."""

    __tablename__ = "alias_history"
    __table_args__ = (Index("ix_alias_history_project_model", "project", "model"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project: Mapped[str] = mapped_column(String(64), default=DEFAULT_PROJECT, server_default=DEFAULT_PROJECT)
    model: Mapped[str] = mapped_column(String(256))
    alias: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16))
    from_version: Mapped[str | None] = mapped_column(String(512), default=None)
    to_version: Mapped[str | None] = mapped_column(String(512), default=None)
    actor: Mapped[str | None] = mapped_column(String(128), default=None)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    request_id: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)


class PromotionRequest(Base):
    """A request to point an alias at a version; promoted once the project's policy holds and approvals are in."""

    __tablename__ = "promotion_requests"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project: Mapped[str] = project_column()
    model: Mapped[str] = mapped_column(String(256))
    alias: Mapped[str] = mapped_column(String(64))
    version_name: Mapped[str] = mapped_column(String(512))
    requested_by: Mapped[str | None] = mapped_column(String(128), default=None)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    status: Mapped[str] = mapped_column(String(16))  # pending | promoted | rejected | refused
    checks_json: Mapped[str] = mapped_column(Text, default="[]", server_default="[]")
    baseline_version: Mapped[str | None] = mapped_column(String(512), default=None)  # the alias's target at request
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class Approval(Base):
    """An approver's decision on a promotion request, with their comment."""

    __tablename__ = "approvals"

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("promotion_requests.id", ondelete="CASCADE"), index=True)
    actor: Mapped[str] = mapped_column(String(128))
    decision: Mapped[str] = mapped_column(String(16))  # approved | rejected
    comment: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)


class VersionEvaluation(Base):
    """An evaluation a version carries: against the base (after training) or against another version."""

    __tablename__ = "version_evaluations"

    id: Mapped[int] = mapped_column(primary_key=True)
    project: Mapped[str] = mapped_column(String(64), default=DEFAULT_PROJECT, server_default=DEFAULT_PROJECT)
    version_name: Mapped[str] = mapped_column(String(512), index=True)
    against_version: Mapped[str | None] = mapped_column(String(512), default=None)  # None: the base model
    verdict: Mapped[str | None] = mapped_column(String(32), default=None)
    summary_json: Mapped[str] = mapped_column(Text)
    actor: Mapped[str | None] = mapped_column(String(128), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)


class AuditLogEntry(Base):
    """One entry of the audit log: `hash` covers its fields and `prev_hash`, the previous entry's hash."""

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)  # assigned by hone.audit
    project: Mapped[str] = mapped_column(String(64), index=True)
    actor: Mapped[str | None] = mapped_column(String(128), default=None)
    action: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[str] = mapped_column(String(512))
    details_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class AuditCheckpoint(Base):
    """A signature over the audit log's entry count and head hash, by a key kept outside the database."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(primary_key=True)
    entries: Mapped[int] = mapped_column(Integer)
    head_hash: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128))  # hex of the Ed25519 signature
    public_key: Mapped[str] = mapped_column(String(64))  # hex of the raw Ed25519 public key
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)


class AliasSplit(Base):
    """A traffic split on an alias: a canary share (or a shadow copy) of its requests goes to a challenger."""

    __tablename__ = "alias_splits"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project: Mapped[str] = project_column()
    model: Mapped[str] = mapped_column(String(256))
    alias: Mapped[str] = mapped_column(String(64))
    champion_version: Mapped[str] = mapped_column(String(512))
    challenger_version: Mapped[str] = mapped_column(String(512))
    mode: Mapped[str] = mapped_column(String(16))  # canary | shadow
    weight: Mapped[float] = mapped_column(Float)  # share of requests (canary) the challenger answers, 0..1
    sticky: Mapped[str] = mapped_column(String(16))  # user | conversation | request
    status: Mapped[str] = mapped_column(String(16))  # active | rolled_back | passed | promoted | ended
    settings_json: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")
    outcome_json: Mapped[str | None] = mapped_column(Text, default=None)
    actor: Mapped[str | None] = mapped_column(String(128), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class LoopFiring(Base):
    """One firing of a retraining trigger; (project, model, trigger, cause) is unique, so no cause fires twice."""

    __tablename__ = "loop_firings"
    __table_args__ = (UniqueConstraint("project", "model", "trigger", "cause", name="uq_loop_firings_cause"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project: Mapped[str] = project_column()
    model: Mapped[str] = mapped_column(String(256))
    trigger: Mapped[str] = mapped_column(String(32))  # drift | format_validity | rating | corrections | schedule
    cause: Mapped[str] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(24))
    job_id: Mapped[str | None] = mapped_column(String(64), default=None)
    dataset_id: Mapped[str | None] = mapped_column(String(64), default=None)
    details_json: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)


class PeriodicLease(Base):
    """Who runs a periodic check now: any number of workers share one schedule and never double-fire."""

    __tablename__ = "periodic_leases"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(128), default=None)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    last_run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class WebSession(Base):
    """A dashboard login: the cookie's sha256, whose key it stands for, and the token its forms must carry."""

    __tablename__ = "web_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    project: Mapped[str] = project_column()
    key_id: Mapped[int | None] = mapped_column(Integer, default=None)  # the row of a key made by `hone keys create`
    command_line_key: Mapped[str | None] = mapped_column(String(64), default=None)  # HMAC of a --api-key key
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class ReviewRound(Base):
    """A human review round (`review-...`): two candidates' replies to sampled prompts, judged blind side by side."""

    __tablename__ = "review_rounds"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project: Mapped[str] = project_column()
    name: Mapped[str] = mapped_column(String(256))
    source: Mapped[str] = mapped_column(String(16))  # evaluation | traffic
    evaluation_id: Mapped[int | None] = mapped_column(Integer, default=None, index=True)  # version_evaluations.id
    model_version: Mapped[str | None] = mapped_column(String(512), default=None, index=True)  # evaluated version
    model: Mapped[str | None] = mapped_column(String(256), default=None)  # traffic: the model requests named
    candidates_json: Mapped[str] = mapped_column(Text)  # [first, second]: never shown to a reviewer
    seed: Mapped[int] = mapped_column(Integer)
    repeats: Mapped[int] = mapped_column(Integer)  # items each reviewer sees twice, sides swapped
    actor: Mapped[str | None] = mapped_column(String(128), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now, index=True)


class ReviewItem(Base):
    """One sampled prompt of a round with the first and second candidate's replies (and the LLM judge's verdict)."""

    __tablename__ = "review_items"

    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[str] = mapped_column(ForeignKey("review_rounds.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    source_ref: Mapped[str] = mapped_column(String(160))  # the eval example's index or the captured response id
    prompt_json: Mapped[str] = mapped_column(Text)
    first_reply: Mapped[str] = mapped_column(Text)
    second_reply: Mapped[str] = mapped_column(Text)
    judge_outcome: Mapped[str | None] = mapped_column(String(16), default=None)  # first | second | tie


class ReviewAssignment(Base):
    """An item as one reviewer sees it (`ritem-...`): its place in their order, which side is A, and their judgment."""

    __tablename__ = "review_assignments"
    __table_args__ = (UniqueConstraint("round_id", "reviewer", "position", name="uq_review_assignments_place"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    round_id: Mapped[str] = mapped_column(ForeignKey("review_rounds.id", ondelete="CASCADE"), index=True)
    reviewer: Mapped[str] = mapped_column(String(128), index=True)
    position: Mapped[int] = mapped_column(Integer)
    item_id: Mapped[int] = mapped_column(ForeignKey("review_items.id", ondelete="CASCADE"))
    swapped: Mapped[int] = mapped_column(Integer)  # 1: reply A is the second candidate's
    repeat: Mapped[int] = mapped_column(Integer)  # 1: the second showing of an item, for self-consistency
    choice: Mapped[str | None] = mapped_column(String(16), default=None)  # A | B | tie | both_bad
    corrected_answer: Mapped[str | None] = mapped_column(Text, default=None)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    judged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
