"""children: nodes announced by a parent's link (issue 17)

- nodes.parent_id: the parent node whose link carries this child (NULL for a
  node with its own link); set NULL if the parent is removed;
- nodes.child_key: the parent's name for the child (its machine GUID, or
  GUID~HOSTNAME for a clone), the CHILD of the parent's /host/CHILD/ API;
- nodes.clone_of: the child node whose machine GUID this child also uses.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as b:
        b.add_column(sa.Column("parent_id", sa.String(36), nullable=True))
        b.add_column(sa.Column("child_key", sa.String(401), nullable=True))
        b.add_column(sa.Column("clone_of", sa.String(36), nullable=True))
        b.create_index("ix_nodes_parent_id", ["parent_id"])
        b.create_foreign_key(
            "fk_nodes_parent_id", "nodes", ["parent_id"], ["id"], ondelete="SET NULL"
        )


def downgrade() -> None:
    with op.batch_alter_table("nodes") as b:
        b.drop_constraint("fk_nodes_parent_id", type_="foreignkey")
        b.drop_index("ix_nodes_parent_id")
        b.drop_column("clone_of")
        b.drop_column("child_key")
        b.drop_column("parent_id")
