"""The Cloud's tables (SQLAlchemy 2, typed). Metric values are never stored."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from tether.protocol.states import NodeState


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    type_annotation_map = {dt.datetime: DateTime(timezone=True)}


class User(Base):
    __tablename__ = "users"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[dt.datetime | None]
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    # "read": GET and HEAD only; "full": everything its user may do (migration 0010).
    scope: Mapped[str] = mapped_column(String(16), default="full", server_default="full")
    expires_at: Mapped[dt.datetime | None]


class LoginSession(Base):
    __tablename__ = "sessions"
    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]


class Space(Base):
    __tablename__ = "spaces"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # The stale policy (tether.cloud.stale_nodes; migration 0008): nodes not
    # live for this many days are removed or marked ("remove" | "mark").
    stale_after_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    stale_action: Mapped[str | None] = mapped_column(String(8), nullable=True)


class SpaceMember(Base):
    __tablename__ = "space_members"
    space_id: Mapped[str] = mapped_column(
        ForeignKey("spaces.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    role: Mapped[str] = mapped_column(String(16))  # admin | manager | member
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class SpaceInvitation(Base):
    """An invitation to join a Space: the invitee becomes a member only when
    they accept it, signed in as the invited email. Only the token's SHA-256
    is kept."""

    __tablename__ = "space_invitations"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    space_id: Mapped[str] = mapped_column(ForeignKey("spaces.id", ondelete="CASCADE"), index=True)
    email: Mapped[str] = mapped_column(String(320), index=True)
    role: Mapped[str] = mapped_column(String(16))
    invited_by: Mapped[str | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    accepted_at: Mapped[dt.datetime | None]
    declined_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]


class Room(Base):
    __tablename__ = "rooms"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    space_id: Mapped[str] = mapped_column(ForeignKey("spaces.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    is_all_nodes: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ClaimToken(Base):
    __tablename__ = "claim_tokens"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    space_id: Mapped[str] = mapped_column(ForeignKey("spaces.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    # Fernet-encrypted token so a Space admin can read it again (the key is
    # secret.key in the data dir); the hash is what claims are checked against.
    # Only the Space's default token keeps it: a named token is shown once.
    token_encrypted: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]
    created_by: Mapped[str | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    # Named tokens (tether.cloud.store.claim_tokens; migration 0005).
    name: Mapped[str] = mapped_column(String(200), default="default")
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    max_uses: Mapped[int | None] = mapped_column(Integer, nullable=True)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    ephemeral: Mapped[bool] = mapped_column(Boolean, default=False)
    rooms: Mapped[str] = mapped_column(Text, default="[]")  # JSON room ids
    labels: Mapped[str] = mapped_column(Text, default="{}")  # JSON {key: value}
    revoked_by: Mapped[str | None] = mapped_column(String(320), nullable=True)
    # Ephemeral tokens: seconds offline after which their nodes are removed (0008).
    ephemeral_ttl_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)


class ClaimAudit(Base):
    __tablename__ = "claim_audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    token_prefix: Mapped[str | None] = mapped_column(String(16))
    node_id: Mapped[str | None] = mapped_column(String(64))
    space_id: Mapped[str | None] = mapped_column(String(36), index=True)
    address: Mapped[str | None] = mapped_column(String(64))
    result: Mapped[str] = mapped_column(String(64))  # "claimed", "reclaimed" or an errorMsgKey


class Node(Base):
    __tablename__ = "nodes"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    space_id: Mapped[str] = mapped_column(ForeignKey("spaces.id", ondelete="CASCADE"), index=True)
    hostname: Mapped[str] = mapped_column(String(255))
    machine_guid: Mapped[str | None] = mapped_column(String(64))
    public_key_pem: Mapped[str] = mapped_column(Text)
    public_key_sha256: Mapped[str] = mapped_column(String(64))
    claimed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    state: Mapped[str] = mapped_column(String(16), default=NodeState.UNSEEN.value)
    state_since: Mapped[dt.datetime] = mapped_column(default=utcnow)
    state_cause: Mapped[str | None] = mapped_column(Text)
    last_address: Mapped[str | None] = mapped_column(String(64))
    agent_version: Mapped[str | None] = mapped_column(String(64))
    os: Mapped[str | None] = mapped_column(String(200))
    # Filled by the link.
    connected_session_id: Mapped[str | None] = mapped_column(String(64))
    last_seen_at: Mapped[dt.datetime | None]
    boot_id: Mapped[str | None] = mapped_column(String(64))
    machine_id: Mapped[str | None] = mapped_column(String(64))
    # The Cloud process holding the live link (so a dead process's nodes can be
    # marked offline by the others), and the last duplicate-identity sighting.
    link_process: Mapped[str | None] = mapped_column(String(64))
    duplicate_detected_at: Mapped[dt.datetime | None]
    duplicate_detail: Mapped[str | None] = mapped_column(Text)  # JSON text
    # Lifecycle (tether.cloud.stale_nodes; migration 0008): an ephemeral node's
    # TTL offline (from its token at claim), and when the stale policy marked it.
    ephemeral_ttl_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    stale_marked_at: Mapped[dt.datetime | None]
    # Lifecycle (migration 0007): key rotation (tether.cloud.key_rotation),
    # planned stops (tether.cloud.planned_stops), clones (tether.cloud.link.clones).
    key_created_at: Mapped[dt.datetime | None]  # None: the key of the claim
    previous_key_sha256: Mapped[str | None] = mapped_column(String(64))
    planned_reason: Mapped[str | None] = mapped_column(String(32))
    expected_back_at: Mapped[dt.datetime | None]
    clone_conflict: Mapped[str | None] = mapped_column(Text)  # JSON text
    clone_conflict_at: Mapped[dt.datetime | None]
    clone_takeover_machine_id: Mapped[str | None] = mapped_column(String(64))
    # Children (tether.cloud.children; migration 0011): the parent whose link
    # carries this node, the parent's name for it, the child it is a clone of.
    parent_id: Mapped[str | None] = mapped_column(
        ForeignKey("nodes.id", ondelete="SET NULL", name="fk_nodes_parent_id"),
        nullable=True,
        index=True,
    )
    child_key: Mapped[str | None] = mapped_column(String(401))
    clone_of: Mapped[str | None] = mapped_column(String(36))

    rooms: Mapped[list[Room]] = relationship(secondary="node_rooms", lazy="selectin")


class NodeRoom(Base):
    __tablename__ = "node_rooms"
    node_id: Mapped[str] = mapped_column(
        ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True
    )
    room_id: Mapped[str] = mapped_column(
        ForeignKey("rooms.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    # "manual" (claim, API, UI) or "rule" (tether.cloud.room_rules; migration 0005).
    source: Mapped[str] = mapped_column(String(8), default="manual")


class NodeEvent(Base):
    __tablename__ = "node_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # No foreign key: the removal event outlives the node it describes.
    node_id: Mapped[str] = mapped_column(String(36))
    space_id: Mapped[str | None] = mapped_column(String(36))
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))  # claimed|reclaimed|state|duplicate|removed
    state: Mapped[str | None] = mapped_column(String(16))
    cause: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[str | None] = mapped_column(Text)  # JSON text

    __table_args__ = (Index("ix_node_events_node_at", "node_id", "at"),)


class NodeChallenge(Base):
    """A node-auth challenge: only its SHA-256 is kept, consumed at most once."""

    __tablename__ = "node_challenges"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    challenge_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    consumed_at: Mapped[dt.datetime | None]
    address: Mapped[str | None] = mapped_column(String(64))


class LinkToken(Base):
    """A one-time token for one /aclk connection: only its SHA-256 is kept."""

    __tablename__ = "link_tokens"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    consumed_at: Mapped[dt.datetime | None]


class ResumeToken(Base):
    """A short-lived, single-use token for one /aclk connection without a
    challenge, handed out in HelloAck (tether.cloud.secret_store.ResumeTokens).
    Only its SHA-256 is kept; rows, so it outlives the Cloud process."""

    __tablename__ = "resume_tokens"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)
    consumed_at: Mapped[dt.datetime | None]


class CloudProcess(Base):
    """A running Cloud process and its heartbeat (links it held die with it)."""

    __tablename__ = "cloud_processes"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    description: Mapped[str | None] = mapped_column(String(200))


# --- alerts and notifications (tether.cloud.alerts) -------------------------


class AlertGrace(Base):
    """How long a node may be offline before a reachability alert: the Space's
    default (scope "space", target ""), or an override for a room or a node."""

    __tablename__ = "alert_grace"
    space_id: Mapped[str] = mapped_column(
        ForeignKey("spaces.id", ondelete="CASCADE"), primary_key=True
    )
    scope: Mapped[str] = mapped_column(String(8), primary_key=True)  # space | room | node
    target: Mapped[str] = mapped_column(String(36), primary_key=True)
    grace_seconds: Mapped[float]


class ReachabilityWatch(Base):
    """A node that went offline and may raise a reachability alert at `due_at`
    (unless it returns first). One per node; gone when it returns or is raised."""

    __tablename__ = "reachability_watches"
    node_id: Mapped[str] = mapped_column(
        ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True
    )
    space_id: Mapped[str] = mapped_column(String(36), index=True)
    offline_at: Mapped[dt.datetime]
    due_at: Mapped[dt.datetime] = mapped_column(index=True)
    grace_seconds: Mapped[float]
    cause: Mapped[str | None] = mapped_column(Text)
    cause_code: Mapped[str] = mapped_column(String(32))
    expected_back_at: Mapped[dt.datetime | None]


class Alert(Base):
    """A Cloud-raised alert (reachability): one row per incident, resolved with
    its duration. Agent alerts are read from their transitions (node_events)."""

    __tablename__ = "alerts"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    space_id: Mapped[str] = mapped_column(ForeignKey("spaces.id", ondelete="CASCADE"), index=True)
    node_id: Mapped[str] = mapped_column(String(36), index=True)
    hostname: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(64))  # "reachability"
    severity: Mapped[str] = mapped_column(String(16))  # warning | critical
    status: Mapped[str] = mapped_column(String(16), index=True)  # active | resolved
    summary: Mapped[str] = mapped_column(Text)
    offline_at: Mapped[dt.datetime]
    raised_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    resolved_at: Mapped[dt.datetime | None]


class NotificationChannel(Base):
    """Where notifications go: a webhook, a Slack-compatible webhook or email.
    `config` is JSON without secrets; the secret (webhook signing key, SMTP
    password, Slack URL) is Fernet-sealed in `secret_sealed`."""

    __tablename__ = "notification_channels"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    space_id: Mapped[str] = mapped_column(ForeignKey("spaces.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))  # webhook | slack | email
    config: Mapped[str] = mapped_column(Text)  # JSON
    secret_sealed: Mapped[str | None] = mapped_column(Text)
    rooms: Mapped[str] = mapped_column(Text, default="[]")  # JSON room ids; [] = every room
    severities: Mapped[str] = mapped_column(Text, default='["warning", "critical"]')  # JSON
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Notification(Base):
    """The outbox: a notification is written in the transaction of its event
    and sent later by whichever Cloud process claims it (state pending ->
    sending -> sent | failed); its idempotency key goes to the receiver."""

    __tablename__ = "notification_outbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)
    space_id: Mapped[str] = mapped_column(ForeignKey("spaces.id", ondelete="CASCADE"), index=True)
    channel_id: Mapped[str] = mapped_column(
        ForeignKey("notification_channels.id", ondelete="CASCADE"), index=True
    )
    alert_id: Mapped[str | None] = mapped_column(String(36))
    node_id: Mapped[str | None] = mapped_column(String(36))
    event: Mapped[str] = mapped_column(String(16))  # raised | resolved | summary | test
    payload: Mapped[str] = mapped_column(Text)  # JSON, the body's "alert" part
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_until: Mapped[dt.datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[dt.datetime | None]

    __table_args__ = (Index("ix_notification_outbox_state_next", "state", "next_attempt_at"),)


class Silence(Base):
    """No notifications for a node, a room or nodes with a label until
    `ends_at` (a maintenance window); alerts are still raised and shown."""

    __tablename__ = "alert_silences"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    space_id: Mapped[str] = mapped_column(ForeignKey("spaces.id", ondelete="CASCADE"), index=True)
    scope: Mapped[str] = mapped_column(String(8))  # node | room | label
    target: Mapped[str] = mapped_column(String(300))  # node or room id; label "key=value"
    reason: Mapped[str] = mapped_column(String(200), default="")
    ends_at: Mapped[dt.datetime]
    created_by: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class AlertFlap(Base):
    """Per node: notifications sent in the current window and how many were
    held back (a flapping node gets a summary, not a storm)."""

    __tablename__ = "alert_flaps"
    node_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    space_id: Mapped[str] = mapped_column(String(36))
    window_started_at: Mapped[dt.datetime]
    sent: Mapped[int] = mapped_column(Integer, default=0)
    held: Mapped[int] = mapped_column(Integer, default=0)


# --- claiming token uses, node labels, room rules (migration 0005) -----------


class ClaimTokenUse(Base):
    """A successful claim with a token: which node, when, from which address."""

    __tablename__ = "claim_token_uses"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token_id: Mapped[str] = mapped_column(
        ForeignKey("claim_tokens.id", ondelete="CASCADE"), index=True
    )
    node_id: Mapped[str] = mapped_column(String(36), index=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    address: Mapped[str | None] = mapped_column(String(64))
    result: Mapped[str] = mapped_column(String(16))  # claimed | reclaimed


class NodeLabel(Base):
    """One label of a node from one source; where sources disagree on a key
    the highest `rank` wins (cloud 3 > agent 2 > token 1)."""

    __tablename__ = "node_labels"
    node_id: Mapped[str] = mapped_column(
        ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    source: Mapped[str] = mapped_column(String(8), primary_key=True)  # token | agent | cloud
    rank: Mapped[int] = mapped_column(Integer)
    value: Mapped[str] = mapped_column(String(200))

    __table_args__ = (Index("ix_node_labels_key_value", "key", "value"),)


class RoomRule(Base):
    """A room membership rule: nodes whose label `key` matches `op` `value`
    are put in (include) or kept out of (exclude) the room."""

    __tablename__ = "room_rules"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    room_id: Mapped[str] = mapped_column(ForeignKey("rooms.id", ondelete="CASCADE"), index=True)
    space_id: Mapped[str] = mapped_column(ForeignKey("spaces.id", ondelete="CASCADE"), index=True)
    action: Mapped[str] = mapped_column(String(8))  # include | exclude
    key: Mapped[str] = mapped_column(String(64))
    op: Mapped[str] = mapped_column(String(16))  # equals | starts_with | ends_with | contains
    value: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class AuditEntry(Base):
    """Who did what in a Space (tether.cloud.audit; migration 0008)."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    space_id: Mapped[str] = mapped_column(ForeignKey("spaces.id", ondelete="CASCADE"))
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(320))  # an email, "policy:..." or "token:..."
    action: Mapped[str] = mapped_column(String(40))  # e.g. token.created, node.removed
    target: Mapped[str | None] = mapped_column(String(200))
    details: Mapped[str | None] = mapped_column(Text)  # JSON text

    __table_args__ = (Index("ix_audit_log_space_id", "space_id", "id"),)


__all__ = [
    "Alert",
    "AlertFlap",
    "AlertGrace",
    "ApiToken",
    "AuditEntry",
    "Base",
    "ClaimAudit",
    "ClaimToken",
    "ClaimTokenUse",
    "CloudProcess",
    "LinkToken",
    "LoginSession",
    "Node",
    "NodeChallenge",
    "NodeEvent",
    "NodeLabel",
    "NodeRoom",
    "Notification",
    "NotificationChannel",
    "ReachabilityWatch",
    "Room",
    "RoomRule",
    "Silence",
    "Space",
    "SpaceInvitation",
    "SpaceMember",
    "User",
]
