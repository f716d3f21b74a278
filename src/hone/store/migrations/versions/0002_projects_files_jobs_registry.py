"""Projects on keys and captured traffic, roles on keys; files, fine-tuning jobs with their events and checkpoints,
model versions.

Existing keys and captured requests join the project `default`; existing keys get the role `admin`.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"

PROJECT_TABLES = ("api_keys", "captured_requests")


def _project() -> sa.Column:
    return sa.Column("project", sa.String(64), server_default="default", nullable=False)


def _created_at() -> sa.Column:
    return sa.Column("created_at", sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    for table in PROJECT_TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(_project())
            batch.create_index(f"ix_{table}_project", ["project"])
    with op.batch_alter_table("api_keys") as batch:  # keys from before roles keep the full access they had
        batch.add_column(sa.Column("role", sa.String(16), server_default="admin", nullable=False))

    op.create_table(
        "files",
        sa.Column("id", sa.String(64), nullable=False),
        _project(),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("filename", sa.String(256), nullable=False),
        sa.Column("bytes", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("format", sa.String(32), nullable=True),
        sa.Column("examples", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("warnings", sa.Integer(), nullable=False),
        sa.Column("validation_json", sa.Text(), nullable=False),
        _created_at(),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    for column in ("project", "purpose", "sha256", "created_at"):
        op.create_index(f"ix_files_{column}", "files", [column])

    op.create_table(
        "fine_tuning_jobs",
        sa.Column("id", sa.String(64), nullable=False),
        _project(),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("base_model", sa.Text(), nullable=False),
        sa.Column("training_file", sa.String(64), nullable=False),
        sa.Column("validation_file", sa.String(64), nullable=True),
        sa.Column("suffix", sa.String(64), nullable=True),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("metadata_json", sa.Text(), nullable=False),
        sa.Column("method_json", sa.Text(), nullable=False),
        sa.Column("hone_json", sa.Text(), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("error_json", sa.Text(), nullable=True),
        sa.Column("fine_tuned_model", sa.String(512), nullable=True),
        sa.Column("trained_tokens", sa.Integer(), nullable=True),
        sa.Column("result_files_json", sa.Text(), nullable=False),
        sa.Column("estimated_finish", sa.DateTime(timezone=True), nullable=True),
        _created_at(),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("requested", sa.String(16), nullable=True),
        sa.Column("worker_id", sa.String(128), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("run_dir", sa.Text(), nullable=True),
        sa.Column("evaluation_json", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    for column in ("project", "status", "created_at", "lease_expires_at"):
        op.create_index(f"ix_fine_tuning_jobs_{column}", "fine_tuning_jobs", [column])

    op.create_table(
        "fine_tuning_job_events",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("level", sa.String(8), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("data_json", sa.Text(), nullable=True),
        _created_at(),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
        sa.ForeignKeyConstraint(["job_id"], ["fine_tuning_jobs.id"], ondelete="CASCADE"),
    )
    op.create_index("ix_fine_tuning_job_events_job_id", "fine_tuning_job_events", ["job_id"])

    op.create_table(
        "fine_tuning_job_checkpoints",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("fine_tuned_model_checkpoint", sa.String(512), nullable=False),
        sa.Column("metrics_json", sa.Text(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        _created_at(),
        sa.PrimaryKeyConstraint("id"),
        sa.ForeignKeyConstraint(["job_id"], ["fine_tuning_jobs.id"], ondelete="CASCADE"),
    )
    for column in ("job_id", "fine_tuned_model_checkpoint"):
        op.create_index(f"ix_fine_tuning_job_checkpoints_{column}", "fine_tuning_job_checkpoints", [column])

    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        _project(),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("base_model", sa.Text(), nullable=False),
        sa.Column("base_fingerprint", sa.String(64), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=True),
        sa.Column("training_file_sha256", sa.String(64), nullable=True),
        sa.Column("dataset_id", sa.String(64), nullable=True),
        sa.Column("config_json", sa.Text(), nullable=False),
        sa.Column("metrics_json", sa.Text(), nullable=False),
        sa.Column("eval_json", sa.Text(), nullable=True),
        sa.Column("verdict", sa.String(32), nullable=True),
        sa.Column("run_dir", sa.Text(), nullable=False),
        sa.Column("weights_dir", sa.Text(), nullable=False),
        _created_at(),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    for column in ("project", "base_fingerprint", "job_id", "created_at"):
        op.create_index(f"ix_model_versions_{column}", "model_versions", [column])

