"""scale-out (issue 19): limits and files shared by every Cloud process

`shared_limits`: one row per (scope, key) of a rate limit counted once for
every Cloud process on this database (tether.cloud.shared_limits): the times
(wall clock, seconds) of the key's recent events, oldest first, and when the
row no longer matters (its newest event plus the window), for pruning.
PostgreSQL only: SQLite means one process, whose limits stay in memory.

`cloud_files`: the files every Cloud process of one database shares
(tether.cloud.shared_config: the CA and its key, the server certificate and
key, secret.key), written once by `tether-cloud init` or the first process.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cloud_files",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    op.create_table(
        "shared_limits",
        sa.Column("scope", sa.String(32), nullable=False),
        sa.Column("key", sa.String(400), nullable=False),
        sa.Column("events", postgresql.ARRAY(sa.Float()), nullable=False),
        sa.Column("counted", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "key"),
    )
    op.create_index("ix_shared_limits_expires_at", "shared_limits", ["expires_at"])


def downgrade() -> None:
    op.drop_table("cloud_files")
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_shared_limits_expires_at", table_name="shared_limits")
    op.drop_table("shared_limits")
