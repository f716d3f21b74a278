"""Governance: projects with their settings, the model a version belongs to (its number and author), who created
each job, aliases with their append-only history, promotion requests with their approvals, and the evaluations a
version carries (against the base or against another version).

Existing versions get their model (the job's suffix, else its base), numbers in order of creation and the author
the audit log names for their job; existing jobs get their creator from the audit log.
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def _created_at() -> sa.Column:
    return sa.Column("created_at", sa.DateTime(timezone=True), nullable=False)


def _project() -> sa.Column:
    return sa.Column("project", sa.String(64), server_default="default", nullable=False)


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("settings_json", sa.Text(), nullable=False, server_default="{}"),
        _created_at(),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.add_column(sa.Column("created_by", sa.String(128), nullable=True))
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("model", sa.String(256), server_default="-", nullable=False))
        batch.add_column(sa.Column("version", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("author", sa.String(128), nullable=True))
        batch.create_index("ix_model_versions_model", ["model"])

    op.create_table(
        "model_aliases",
        sa.Column("id", sa.Integer(), nullable=False),
        _project(),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("version_name", sa.String(512), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project", "model", "alias", name="uq_model_aliases_project_model_alias"),
    )
    op.create_table(
        "alias_history",
        sa.Column("id", sa.Integer(), nullable=False),
        _project(),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("from_version", sa.String(512), nullable=True),
        sa.Column("to_version", sa.String(512), nullable=True),
        sa.Column("actor", sa.String(128), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("request_id", sa.String(64), nullable=True),
        _created_at(),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_alias_history_project_model", "alias_history", ["project", "model"])
    op.create_table(
        "promotion_requests",
        sa.Column("id", sa.String(64), nullable=False),
        _project(),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("version_name", sa.String(512), nullable=False),
        sa.Column("requested_by", sa.String(128), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("checks_json", sa.Text(), nullable=False, server_default="[]"),
        sa.Column("baseline_version", sa.String(512), nullable=True),
        _created_at(),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_promotion_requests_project", "promotion_requests", ["project"])
    op.create_table(
        "approvals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.String(64), sa.ForeignKey("promotion_requests.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        _created_at(),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_approvals_request_id", "approvals", ["request_id"])
    op.create_table(
        "version_evaluations",
        sa.Column("id", sa.Integer(), nullable=False),
        _project(),
        sa.Column("version_name", sa.String(512), nullable=False),
        sa.Column("against_version", sa.String(512), nullable=True),
        sa.Column("verdict", sa.String(32), nullable=True),
        sa.Column("summary_json", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(128), nullable=True),
        _created_at(),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_version_evaluations_version_name", "version_evaluations", ["version_name"])
    _backfill()
    with op.batch_alter_table("model_versions") as batch:  # two versions of one model never share a number
        batch.create_unique_constraint("uq_model_versions_project_model_version", ["project", "model", "version"])


def _backfill() -> None:
    """Creators of existing jobs from the audit log; model, number, author and evaluation of existing versions."""
    bind = op.get_bind()
    creators = {row.object_id: row.actor for row in bind.execute(sa.text(
        "SELECT object_id, actor FROM audit_log WHERE action = 'job.created' ORDER BY seq"))}
    for job_id, actor in creators.items():
        bind.execute(sa.text("UPDATE fine_tuning_jobs SET created_by = :actor WHERE id = :id"),
                     {"actor": actor, "id": job_id})
    jobs = {row.id: row for row in bind.execute(sa.text("SELECT id, model, suffix FROM fine_tuning_jobs"))}
    numbers: dict[tuple[str, str], int] = {}
    versions = bind.execute(sa.text("SELECT id, project, name, job_id, eval_json, verdict, created_at "
                                    "FROM model_versions ORDER BY created_at, id")).all()
    for row in versions:
        job = jobs.get(row.job_id)
        model = (job.suffix or job.model) if job else row.name
        numbers[(row.project, model)] = numbers.get((row.project, model), 0) + 1
        bind.execute(sa.text("UPDATE model_versions SET model = :model, version = :version, author = :author "
                             "WHERE id = :id"), {"model": model, "version": numbers[(row.project, model)],
                                                 "author": creators.get(row.job_id), "id": row.id})
        if row.eval_json and "error" not in json.loads(row.eval_json):  # an eval that could not run says nothing
            bind.execute(sa.text(
                "INSERT INTO version_evaluations (project, version_name, against_version, verdict, summary_json, "
                "actor, created_at) VALUES (:project, :name, NULL, :verdict, :summary, NULL, :created_at)"),
                {"project": row.project, "name": row.name, "verdict": row.verdict,
                 "summary": row.eval_json, "created_at": row.created_at})


def downgrade() -> None:
    for table in ("version_evaluations", "approvals", "promotion_requests", "alias_history", "model_aliases",
                  "projects"):
        op.drop_table(table)
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_constraint("uq_model_versions_project_model_version", type_="unique")
        batch.drop_index("ix_model_versions_model")
        for column in ("author", "version", "model"):
            batch.drop_column(column)
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.drop_column("created_by")
