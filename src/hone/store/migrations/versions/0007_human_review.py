"""Human review: rounds of sampled prompts with two candidates' replies, each reviewer's blinded order of them
(which side is A, repeats with the sides swapped) and their judgments."""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    op.create_table(
        "review_rounds",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("project", sa.String(64), server_default="default", nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("evaluation_id", sa.Integer(), nullable=True),
        sa.Column("model_version", sa.String(512), nullable=True),
        sa.Column("model", sa.String(256), nullable=True),
        sa.Column("candidates_json", sa.Text(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("repeats", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    for column in ("project", "evaluation_id", "model_version", "created_at"):
        op.create_index(f"ix_review_rounds_{column}", "review_rounds", [column])

    op.create_table(
        "review_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("round_id", sa.String(64), sa.ForeignKey("review_rounds.id", ondelete="CASCADE"), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("source_ref", sa.String(160), nullable=False),
        sa.Column("prompt_json", sa.Text(), nullable=False),
        sa.Column("first_reply", sa.Text(), nullable=False),
        sa.Column("second_reply", sa.Text(), nullable=False),
        sa.Column("judge_outcome", sa.String(16), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_review_items_round_id", "review_items", ["round_id"])

    op.create_table(
        "review_assignments",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("round_id", sa.String(64), sa.ForeignKey("review_rounds.id", ondelete="CASCADE"), nullable=False),
        sa.Column("reviewer", sa.String(128), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), sa.ForeignKey("review_items.id", ondelete="CASCADE"), nullable=False),
        sa.Column("swapped", sa.Integer(), nullable=False),
        sa.Column("repeat", sa.Integer(), nullable=False),
        sa.Column("choice", sa.String(16), nullable=True),
        sa.Column("corrected_answer", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("judged_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("round_id", "reviewer", "position", name="uq_review_assignments_place"),
    )
    op.create_index("ix_review_assignments_round_id", "review_assignments", ["round_id"])
    op.create_index("ix_review_assignments_reviewer", "review_assignments", ["reviewer"])


def downgrade() -> None:
    for table in ("review_assignments", "review_items", "review_rounds"):
        op.drop_table(table)
