"""API tokens: a scope (read or full) and an optional expiry (issue 15)

Tokens made before this keep full access and never expire, as they did.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as b:
        b.add_column(sa.Column("scope", sa.String(16), nullable=False, server_default="full"))
        b.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as b:
        b.drop_column("expires_at")
        b.drop_column("scope")
