"""claim tokens: named tokens with uses, node labels, room rules

The Space's one claiming token becomes its default named token ("default");
named tokens keep only a hash (token_encrypted becomes nullable).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("claim_tokens") as b:
        b.alter_column("token_encrypted", existing_type=sa.Text(), nullable=True)
        b.add_column(sa.Column("name", sa.String(200), nullable=False, server_default="default"))
        b.add_column(
            sa.Column("is_default", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        b.add_column(sa.Column("max_uses", sa.Integer(), nullable=True))
        b.add_column(sa.Column("uses", sa.Integer(), nullable=False, server_default="0"))
        b.add_column(
            sa.Column("ephemeral", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        b.add_column(sa.Column("rooms", sa.Text(), nullable=False, server_default="[]"))
        b.add_column(sa.Column("labels", sa.Text(), nullable=False, server_default="{}"))
        b.add_column(sa.Column("revoked_by", sa.String(320), nullable=True))
    # Every token so far was a Space's one (default) token, current or rotated.
    op.execute("UPDATE claim_tokens SET is_default = true, name = 'default'")

    op.create_table(
        "claim_token_uses",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("token_id", sa.String(36), nullable=False),
        sa.Column("node_id", sa.String(36), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("address", sa.String(64), nullable=True),
        sa.Column("result", sa.String(16), nullable=False),
        sa.ForeignKeyConstraint(["token_id"], ["claim_tokens.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_claim_token_uses_token_id", "claim_token_uses", ["token_id"])
    op.create_index("ix_claim_token_uses_node_id", "claim_token_uses", ["node_id"])

    op.create_table(
        "node_labels",
        sa.Column("node_id", sa.String(36), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("source", sa.String(8), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("value", sa.String(200), nullable=False),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("node_id", "key", "source"),
    )
    op.create_index("ix_node_labels_key_value", "node_labels", ["key", "value"])

    op.create_table(
        "room_rules",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("room_id", sa.String(36), nullable=False),
        sa.Column("space_id", sa.String(36), nullable=False),
        sa.Column("action", sa.String(8), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("op", sa.String(16), nullable=False),
        sa.Column("value", sa.String(200), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["room_id"], ["rooms.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["space_id"], ["spaces.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_room_rules_room_id", "room_rules", ["room_id"])
    op.create_index("ix_room_rules_space_id", "room_rules", ["space_id"])

    op.add_column(
        "node_rooms", sa.Column("source", sa.String(8), nullable=False, server_default="manual")
    )


def downgrade() -> None:
    with op.batch_alter_table("node_rooms") as b:
        b.drop_column("source")
    op.drop_table("room_rules")
    op.drop_table("node_labels")
    op.drop_table("claim_token_uses")
    # Named tokens have no encrypted copy; the older schema cannot hold them.
    op.execute("DELETE FROM claim_tokens WHERE is_default = false")
    with op.batch_alter_table("claim_tokens") as b:
        for column in (
            "revoked_by",
            "labels",
            "rooms",
            "ephemeral",
            "uses",
            "max_uses",
            "is_default",
            "name",
        ):
            b.drop_column(column)
        b.alter_column("token_encrypted", existing_type=sa.Text(), nullable=False)
