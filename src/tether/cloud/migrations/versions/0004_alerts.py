"""alerts: reachability grace and watches, alerts, channels, the outbox, silences

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "alert_grace",
        sa.Column("space_id", sa.String(36), nullable=False),
        sa.Column("scope", sa.String(8), nullable=False),
        sa.Column("target", sa.String(36), nullable=False),
        sa.Column("grace_seconds", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["space_id"], ["spaces.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("space_id", "scope", "target"),
    )
    op.create_table(
        "reachability_watches",
        sa.Column("node_id", sa.String(36), nullable=False),
        sa.Column("space_id", sa.String(36), nullable=False),
        sa.Column("offline_at", TS, nullable=False),
        sa.Column("due_at", TS, nullable=False),
        sa.Column("grace_seconds", sa.Float(), nullable=False),
        sa.Column("cause", sa.Text(), nullable=True),
        sa.Column("cause_code", sa.String(32), nullable=False),
        sa.Column("expected_back_at", TS, nullable=True),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("node_id"),
    )
    op.create_index("ix_reachability_watches_space_id", "reachability_watches", ["space_id"])
    op.create_index("ix_reachability_watches_due_at", "reachability_watches", ["due_at"])
    op.create_table(
        "alerts",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("space_id", sa.String(36), nullable=False),
        sa.Column("node_id", sa.String(36), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("offline_at", TS, nullable=False),
        sa.Column("raised_at", TS, nullable=False),
        sa.Column("resolved_at", TS, nullable=True),
        sa.ForeignKeyConstraint(["space_id"], ["spaces.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_alerts_space_id", "alerts", ["space_id"])
    op.create_index("ix_alerts_node_id", "alerts", ["node_id"])
    op.create_index("ix_alerts_status", "alerts", ["status"])
    op.create_table(
        "notification_channels",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("space_id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("secret_sealed", sa.Text(), nullable=True),
        sa.Column("rooms", sa.Text(), nullable=False),
        sa.Column("severities", sa.Text(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["space_id"], ["spaces.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_notification_channels_space_id", "notification_channels", ["space_id"])
    op.create_table(
        "notification_outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("idempotency_key", sa.String(64), nullable=False),
        sa.Column("space_id", sa.String(36), nullable=False),
        sa.Column("channel_id", sa.String(36), nullable=False),
        sa.Column("alert_id", sa.String(36), nullable=True),
        sa.Column("node_id", sa.String(36), nullable=True),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TS, nullable=False),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("claimed_until", TS, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("sent_at", TS, nullable=True),
        sa.ForeignKeyConstraint(["space_id"], ["spaces.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["channel_id"], ["notification_channels.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key"),
    )
    op.create_index("ix_notification_outbox_space_id", "notification_outbox", ["space_id"])
    op.create_index("ix_notification_outbox_channel_id", "notification_outbox", ["channel_id"])
    op.create_index(
        "ix_notification_outbox_state_next", "notification_outbox", ["state", "next_attempt_at"]
    )
    op.create_table(
        "alert_silences",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("space_id", sa.String(36), nullable=False),
        sa.Column("scope", sa.String(8), nullable=False),
        sa.Column("target", sa.String(300), nullable=False),  # node/room id, or label key=value
        sa.Column("reason", sa.String(200), nullable=False),
        sa.Column("ends_at", TS, nullable=False),
        sa.Column("created_by", sa.String(320), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["space_id"], ["spaces.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_alert_silences_space_id", "alert_silences", ["space_id"])
    op.create_table(
        "alert_flaps",
        sa.Column("node_id", sa.String(36), nullable=False),
        sa.Column("space_id", sa.String(36), nullable=False),
        sa.Column("window_started_at", TS, nullable=False),
        sa.Column("sent", sa.Integer(), nullable=False),
        sa.Column("held", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("node_id"),
    )


def downgrade() -> None:
    op.drop_table("alert_flaps")
    op.drop_index("ix_alert_silences_space_id", table_name="alert_silences")
    op.drop_table("alert_silences")
    for ix in ("state_next", "channel_id", "space_id"):
        op.drop_index(f"ix_notification_outbox_{ix}", table_name="notification_outbox")
    op.drop_table("notification_outbox")
    op.drop_index("ix_notification_channels_space_id", table_name="notification_channels")
    op.drop_table("notification_channels")
    for ix in ("status", "node_id", "space_id"):
        op.drop_index(f"ix_alerts_{ix}", table_name="alerts")
    op.drop_table("alerts")
    op.drop_index("ix_reachability_watches_due_at", table_name="reachability_watches")
    op.drop_index("ix_reachability_watches_space_id", table_name="reachability_watches")
    op.drop_table("reachability_watches")
    op.drop_table("alert_grace")
