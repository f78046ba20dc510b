"""lifecycle (issue 13: ephemeral and stale nodes, audit log, agent labels)

- claim_tokens.ephemeral_ttl_seconds: how long a node enrolled with an
  ephemeral token may stay offline before it is removed;
- nodes.ephemeral_ttl_seconds (copied from the token at claim, so revoking
  the token changes nothing) and nodes.stale_marked_at (the Space's stale
  policy marked it);
- spaces.stale_after_days and spaces.stale_action (remove | mark);
- audit_log: who did what in a Space (tether.cloud.audit).

Agent labels need no schema: node_labels has the "agent" source already.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    # ADD COLUMN only: on SQLite a batch with nothing but added columns is a
    # plain ALTER TABLE (no table copy, so no cascade from spaces or nodes).
    with op.batch_alter_table("claim_tokens") as b:
        b.add_column(sa.Column("ephemeral_ttl_seconds", sa.Integer(), nullable=True))
    with op.batch_alter_table("nodes") as b:
        b.add_column(sa.Column("ephemeral_ttl_seconds", sa.Integer(), nullable=True))
        b.add_column(sa.Column("stale_marked_at", TS, nullable=True))
    with op.batch_alter_table("spaces") as b:
        b.add_column(sa.Column("stale_after_days", sa.Integer(), nullable=True))
        b.add_column(sa.Column("stale_action", sa.String(8), nullable=True))
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("space_id", sa.String(36), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("actor", sa.String(320), nullable=False),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("target", sa.String(200), nullable=True),
        sa.Column("details", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["space_id"], ["spaces.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_audit_log_space_id", "audit_log", ["space_id", "id"])
    # Ephemeral nodes are found by the sweeper without a scan of every node.
    op.create_index("ix_nodes_ephemeral_ttl_seconds", "nodes", ["ephemeral_ttl_seconds"])


def downgrade() -> None:
    op.drop_index("ix_nodes_ephemeral_ttl_seconds", "nodes")
    op.drop_table("audit_log")
    # Plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+), not a batch copy: on
    # SQLite a batch drops and recreates the table, and with foreign keys on
    # dropping `spaces` or `nodes` would cascade to every node and room.
    for table, column in (
        ("spaces", "stale_action"),
        ("spaces", "stale_after_days"),
        ("nodes", "stale_marked_at"),
        ("nodes", "ephemeral_ttl_seconds"),
        ("claim_tokens", "ephemeral_ttl_seconds"),
    ):
        op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
