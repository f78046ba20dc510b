"""lifecycle (issue 13: key rotation, planned stops, clones)

- nodes.key_created_at, nodes.previous_key_sha256: when the node's key was
  registered (claim or rotation; NULL = at claim) and the key it replaced;
- nodes.planned_reason, nodes.expected_back_at: the Goodbye of a planned stop;
- nodes.clone_conflict (JSON), nodes.clone_conflict_at: a second host refused
  while this identity was live; nodes.clone_takeover_machine_id: the host an
  admin lets take the identity over on its next link.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

COLUMNS = (
    ("key_created_at", sa.DateTime(timezone=True)),
    ("previous_key_sha256", sa.String(length=64)),
    ("planned_reason", sa.String(length=32)),
    ("expected_back_at", sa.DateTime(timezone=True)),
    ("clone_conflict", sa.Text()),
    ("clone_conflict_at", sa.DateTime(timezone=True)),
    ("clone_takeover_machine_id", sa.String(length=64)),
)


def upgrade() -> None:
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        for name, kind in COLUMNS:
            batch_op.add_column(sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        for name, _ in reversed(COLUMNS):
            batch_op.drop_column(name)
