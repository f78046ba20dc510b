"""reconnect (issue 18): resume tokens

A resume token (tether.cloud.secret_store.ResumeTokens) lets a node that was
linked reconnect with one WebSocket upgrade and no challenge; only its SHA-256
is kept, bound to the node, single use, short-lived.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "resume_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("node_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("consumed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_index("ix_resume_tokens_node_id", "resume_tokens", ["node_id"])
    op.create_index("ix_resume_tokens_expires_at", "resume_tokens", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_resume_tokens_expires_at", table_name="resume_tokens")
    op.drop_index("ix_resume_tokens_node_id", table_name="resume_tokens")
    op.drop_table("resume_tokens")
