"""Monitoring: what each captured request was answered by (version, alias, arm) and how (latency, finish reason,
tokens); alias traffic splits (canary and shadow); the retraining loop's firings; leases for periodic checks.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"

CAPTURE_COLUMNS = (
    ("served_version", sa.String(512)), ("alias", sa.String(64)), ("arm", sa.String(16)),
    ("latency_ms", sa.Float()), ("finish_reason", sa.String(16)), ("prompt_tokens", sa.Integer()),
    ("completion_tokens", sa.Integer()),
)


def _project() -> sa.Column:
    return sa.Column("project", sa.String(64), server_default="default", nullable=False)


def upgrade() -> None:
    with op.batch_alter_table("captured_requests") as batch:
        for name, kind in CAPTURE_COLUMNS:
            batch.add_column(sa.Column(name, kind, nullable=True))
        batch.create_index("ix_captured_requests_served_version", ["served_version"])

    op.create_table(
        "alias_splits",
        sa.Column("id", sa.String(64), nullable=False),
        _project(),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("champion_version", sa.String(512), nullable=False),
        sa.Column("challenger_version", sa.String(512), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.Column("sticky", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("settings_json", sa.Text(), nullable=False, server_default="{}"),
        sa.Column("outcome_json", sa.Text(), nullable=True),
        sa.Column("actor", sa.String(128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_alias_splits_project", "alias_splits", ["project"])

    op.create_table(
        "loop_firings",
        sa.Column("id", sa.String(64), nullable=False),
        _project(),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("trigger", sa.String(32), nullable=False),
        sa.Column("cause", sa.String(256), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=True),
        sa.Column("dataset_id", sa.String(64), nullable=True),
        sa.Column("details_json", sa.Text(), nullable=False, server_default="{}"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project", "model", "trigger", "cause", name="uq_loop_firings_cause"),
    )
    op.create_index("ix_loop_firings_project", "loop_firings", ["project"])

    op.create_table(
        "periodic_leases",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("holder", sa.String(128), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    for table in ("periodic_leases", "loop_firings", "alias_splits"):
        op.drop_table(table)
    with op.batch_alter_table("captured_requests") as batch:
        batch.drop_index("ix_captured_requests_served_version")
        for name, _ in CAPTURE_COLUMNS:
            batch.drop_column(name)
