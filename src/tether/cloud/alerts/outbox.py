"""The notification outbox: rows written in the transaction of their event,
claimed and sent by exactly one Cloud process, retried with backoff, then
`failed` (shown in the API and UI).

A crash between the event and the send loses nothing (the row is committed
with the event) and duplicates nothing the receiver can tell apart: every
attempt of one notification carries the same idempotency key. A claim is a
lease: a process that dies mid-send leaves the row `sending` until the lease
ends (or, on a single-process Cloud, until it starts again), then it is sent
again with the same key.

Claiming: PostgreSQL locks the candidate rows with FOR UPDATE SKIP LOCKED, so
two processes never claim one row; SQLite runs the claim in a BEGIN IMMEDIATE
transaction (one writer at a time), which gives the same guarantee.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from tether.cloud.alerts import policy
from tether.cloud.db import Database
from tether.cloud.models import (
    Alert,
    AlertFlap,
    Node,
    NodeLabel,
    NodeRoom,
    Notification,
    NotificationChannel,
    Silence,
    Space,
)
from tether.cloud.secrets import SecretBox, aware, iso

PENDING, SENDING, SENT, FAILED = "pending", "sending", "sent", "failed"
SCHEMA = "tether.alert.v1"


@dataclass(frozen=True)
class Limits:
    """Delivery policy (from CloudSettings)."""

    flap_limit: int = 6
    flap_window_seconds: float = 600.0
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 300.0
    max_attempts: int = 8
    lease_seconds: float = 30.0


def idempotency_key(*parts: str) -> str:
    return "tn_" + hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]


def _epoch(value: dt.datetime) -> float:
    return aware(value).timestamp()


def node_rooms(s: Session, node_id: str) -> list[str]:
    return list(s.scalars(select(NodeRoom.room_id).where(NodeRoom.node_id == node_id)))


def labels_of(s: Session, node_id: str) -> set[str]:
    """The node's labels as "key=value", the highest-ranked source per key."""
    best: dict[str, tuple[int, str]] = {}
    for key, rank, value in s.execute(
        select(NodeLabel.key, NodeLabel.rank, NodeLabel.value).where(NodeLabel.node_id == node_id)
    ):
        if key not in best or rank > best[key][0]:
            best[key] = (rank, value)
    return {f"{k}={v}" for k, (_, v) in best.items()}


def silenced(s: Session, space_id: str, node_id: str, rooms: list[str], now: dt.datetime) -> bool:
    """A silence on the node, one of its rooms or one of its labels that has not ended."""
    rows = s.execute(
        select(Silence.scope, Silence.target).where(
            Silence.space_id == space_id, Silence.ends_at > now
        )
    ).all()
    if not rows:
        return False
    if any((sc == "node" and t == node_id) or (sc == "room" and t in rooms) for sc, t in rows):
        return True
    wanted = {t for sc, t in rows if sc == "label"}
    return bool(wanted and wanted & labels_of(s, node_id))


def routed(channel: NotificationChannel, rooms: list[str], severity: str) -> bool:
    """A channel takes an alert of this severity from a node in these rooms."""
    wanted_rooms = json.loads(channel.rooms or "[]")
    if wanted_rooms and not set(wanted_rooms) & set(rooms):
        return False
    return severity in json.loads(channel.severities or "[]")


def alert_json(alert: Alert, space_name: str, now: dt.datetime) -> dict[str, Any]:
    end = alert.resolved_at or now
    return {
        "id": alert.id,
        "name": alert.name,
        "severity": alert.severity,
        "status": alert.status,
        "summary": alert.summary,
        "node": {"id": alert.node_id, "hostname": alert.hostname},
        "space": {"id": alert.space_id, "name": space_name},
        "offline_at": iso(alert.offline_at),
        "raised_at": iso(alert.raised_at),
        "resolved_at": iso(alert.resolved_at),
        "duration_seconds": round(_epoch(end) - _epoch(alert.offline_at), 3),
    }


def _flap(s: Session, node: Node, now: dt.datetime, limits: Limits) -> tuple[bool, int]:
    """Count one notification of this node against its flap window; whether it
    may go out, and a held count to summarise from a window that ended."""
    row = s.get(AlertFlap, node.id, with_for_update=True)
    state = policy.FlapState(_epoch(row.window_started_at), row.sent, row.held) if row else None
    send, new, ended = policy.flap_decision(
        state, now.timestamp(), limits.flap_limit, limits.flap_window_seconds
    )
    if row is None:
        row = AlertFlap(node_id=node.id, space_id=node.space_id)
        s.add(row)
    row.window_started_at = dt.datetime.fromtimestamp(new.window_started, dt.UTC)
    row.sent, row.held = new.sent, new.held
    return send, ended


def enqueue(
    s: Session, alert: Alert, event: str, now: dt.datetime, limits: Limits
) -> list[Notification]:
    """Write the notifications of one alert event (raised | resolved) for every
    channel routed to it, unless silenced or held back as flapping. A resolved
    goes out only where its raised did."""
    node = s.get(Node, alert.node_id)
    space = s.get(Space, alert.space_id)
    if node is None or space is None:
        return []
    rooms = node_rooms(s, node.id)
    if event == "resolved":
        raised_on = set(
            s.scalars(
                select(Notification.channel_id).where(
                    Notification.alert_id == alert.id, Notification.event == "raised"
                )
            )
        )
        channels = [c for c in _channels(s, space.id) if c.id in raised_on]
    else:
        if silenced(s, space.id, node.id, rooms, now):
            return []
        channels = [c for c in _channels(s, space.id) if routed(c, rooms, alert.severity)]
    if not channels:
        return []
    send, ended = _flap(s, node, now, limits)
    out: list[Notification] = []
    if ended:
        out += _summary(s, node, space, channels, ended, now)
    if not send and event == "raised":
        return out
    body = alert_json(alert, space.name, now)
    for ch in channels:
        out.append(_add(s, ch, event, body, now, alert_id=alert.id, node_id=node.id))
    return out


def _channels(s: Session, space_id: str) -> list[NotificationChannel]:
    return list(
        s.scalars(
            select(NotificationChannel)
            .where(NotificationChannel.space_id == space_id, NotificationChannel.enabled)
            .order_by(NotificationChannel.created_at)
        )
    )


def _add(
    s: Session,
    ch: NotificationChannel,
    event: str,
    body: dict[str, Any],
    now: dt.datetime,
    *,
    alert_id: str | None,
    node_id: str | None,
    key_part: str = "",
) -> Notification:
    row = Notification(
        idempotency_key=idempotency_key(alert_id or "", event, ch.id, key_part),
        space_id=ch.space_id,
        channel_id=ch.id,
        alert_id=alert_id,
        node_id=node_id,
        event=event,
        payload=json.dumps(body),
        state=PENDING,
        attempts=0,
        next_attempt_at=now,
        created_at=now,
    )
    s.add(row)
    return row


def _summary(
    s: Session,
    node: Node,
    space: Space,
    channels: list[NotificationChannel],
    held: int,
    now: dt.datetime,
) -> list[Notification]:
    body = {
        "id": None,
        "name": "flapping",
        "severity": policy.SEVERITY_WARNING,
        "status": node.state,
        "summary": f"{node.hostname} went offline and back often: {held} notifications "
        f"held back; it is {node.state} now",
        "node": {"id": node.id, "hostname": node.hostname},
        "space": {"id": space.id, "name": space.name},
        "held": held,
    }
    return [
        _add(s, ch, "summary", body, now, alert_id=None, node_id=node.id, key_part=iso(now) or "")
        for ch in channels
    ]


def flush_summaries(db: Database, now: dt.datetime, limits: Limits) -> int:
    """Summaries for nodes that stopped flapping: windows that ended with held
    notifications. Each flap row is locked, so one process writes each."""
    cutoff = now - dt.timedelta(seconds=limits.flap_window_seconds)
    with db.session() as s:
        ids = list(
            s.scalars(
                select(AlertFlap.node_id)
                .where(AlertFlap.held > 0, AlertFlap.window_started_at <= cutoff)
                .limit(200)
            )
        )
    done = 0
    for node_id in ids:
        with db.session(write_lock=True) as s:
            row = s.get(AlertFlap, node_id, with_for_update=True)
            if row is None or row.held == 0 or aware(row.window_started_at) > cutoff:
                continue
            held, row.held = row.held, 0
            node = s.get(Node, node_id)
            space = s.get(Space, row.space_id)
            if node is None or space is None:
                s.delete(row)
                continue
            rooms = node_rooms(s, node_id)
            channels = [
                c for c in _channels(s, space.id) if routed(c, rooms, policy.SEVERITY_WARNING)
            ]
            _summary(s, node, space, channels, held, now)
            done += 1
    return done


@dataclass(frozen=True)
class Claimed:
    """One notification this process is sending now, with its channel."""

    id: int
    key: str
    event: str
    body: dict[str, Any]
    attempts: int
    channel_kind: str
    channel_config: dict[str, Any]
    secret: str | None


def claim(
    db: Database, process_id: str, now: dt.datetime, limits: Limits, box: SecretBox, n: int = 50
) -> list[Claimed]:
    """Claim up to `n` notifications that are due (pending, or sending with an
    ended lease) for this process."""
    until = now + dt.timedelta(seconds=limits.lease_seconds)
    out: list[Claimed] = []
    with db.session(write_lock=True) as s:
        q = (
            select(Notification)
            .where(
                or_(
                    and_(Notification.state == PENDING, Notification.next_attempt_at <= now),
                    and_(Notification.state == SENDING, Notification.claimed_until < now),
                )
            )
            .order_by(Notification.id)
            .limit(n)
        )
        if not db.is_sqlite:
            q = q.with_for_update(skip_locked=True)
        for row in s.scalars(q):
            ch = s.get(NotificationChannel, row.channel_id)
            if ch is None:
                continue
            row.state, row.claimed_by, row.claimed_until = SENDING, process_id, until
            row.attempts += 1
            out.append(
                Claimed(
                    id=row.id,
                    key=row.idempotency_key,
                    event=row.event,
                    body=json.loads(row.payload),
                    attempts=row.attempts,
                    channel_kind=ch.kind,
                    channel_config=json.loads(ch.config),
                    secret=box.open(ch.secret_sealed) if ch.secret_sealed else None,
                )
            )
    return out


def finish(
    db: Database,
    process_id: str,
    item: Claimed,
    error: str | None,
    now: dt.datetime,
    limits: Limits,
) -> str:
    """Record a send's outcome (only while this process still holds the claim):
    sent, retry later, or failed after the last attempt. The new state."""
    if error is None:
        values: dict[str, Any] = {"state": SENT, "sent_at": now, "last_error": None}
    elif item.attempts >= limits.max_attempts:
        values = {"state": FAILED, "last_error": error[:500]}
    else:
        delay = policy.backoff(item.attempts, limits.retry_base_seconds, limits.retry_max_seconds)
        values = {
            "state": PENDING,
            "last_error": error[:500],
            "next_attempt_at": now + dt.timedelta(seconds=delay),
        }
    with db.session(write_lock=True) as s:
        done = s.execute(
            update(Notification)
            .where(
                Notification.id == item.id,
                Notification.state == SENDING,
                Notification.claimed_by == process_id,
            )
            .values(claimed_until=None, **values)
        )
    return str(values["state"]) if getattr(done, "rowcount", 1) else "lost-claim"


def release_all(db: Database) -> int:
    """A single-process Cloud starting: no send of the last process is still in
    flight, so its claims end now (sent again with the same key)."""
    with db.session(write_lock=True) as s:
        done = s.execute(
            update(Notification)
            .where(Notification.state == SENDING)
            .values(state=PENDING, claimed_by=None, claimed_until=None)
        )
    return int(getattr(done, "rowcount", 0) or 0)


def next_due(s: Session) -> dt.datetime | None:
    value = s.scalar(
        select(Notification.next_attempt_at)
        .where(Notification.state == PENDING)
        .order_by(Notification.next_attempt_at)
        .limit(1)
    )
    return aware(value) if value else None


def notification_json(n: Notification, channel_name: str) -> dict[str, Any]:
    return {
        "id": n.id,
        "idempotency_key": n.idempotency_key,
        "channel": {"id": n.channel_id, "name": channel_name},
        "alert_id": n.alert_id,
        "node_id": n.node_id,
        "event": n.event,
        "state": n.state,
        "attempts": n.attempts,
        "last_error": n.last_error,
        "created_at": iso(n.created_at),
        "next_attempt_at": iso(n.next_attempt_at) if n.state == PENDING else None,
        "sent_at": iso(n.sent_at),
    }
