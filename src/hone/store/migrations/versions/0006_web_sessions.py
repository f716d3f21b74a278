"""Dashboard sessions: a login with an API key becomes a session cookie. Only the cookie's sha256 is stored, with
the key's row id (or a per-process HMAC of a key given on `hone serve`'s command line) and the session's CSRF token."""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.create_table(
        "web_sessions",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("project", sa.String(64), server_default="default", nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=True),
        sa.Column("command_line_key", sa.String(64), nullable=True),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_index("ix_web_sessions_project", "web_sessions", ["project"])
    op.create_index("ix_web_sessions_expires_at", "web_sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_table("web_sessions")
