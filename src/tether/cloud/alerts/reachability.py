"""Reachability alerts in the database, driven by presence.

tether.cloud.link.presence calls `node_offline` and `node_live` in the very
transaction that changes the node's state, so a watch or a resolved alert is
never lost or doubled by a crash. The worker calls `raise_due`: a watch whose
time came (see policy) becomes one alert and its notifications, in one
transaction that locks the node and then the watch, so of several Cloud
processes exactly one raises it, and a node coming back at that moment either
deletes the watch first or resolves the alert after.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from tether.cloud import node_metadata as meta
from tether.cloud.alerts import outbox, policy
from tether.cloud.db import Database
from tether.cloud.models import Alert, AlertGrace, Node, ReachabilityWatch, utcnow
from tether.cloud.secrets import aware
from tether.protocol.states import NodeState

log = logging.getLogger("tether.cloud.alerts")

# When no Space default is set (CloudSettings.alert_default_grace_seconds
# replaces it at start: see worker.AlertWorker).
DEFAULT_GRACE_SECONDS = 60.0
defaults = {"grace_seconds": DEFAULT_GRACE_SECONDS}
limits = outbox.Limits()


def grace_of(s: Session, node: Node) -> float:
    # A Space's grace rows are few: read once per transaction (a bulk offline
    # of thousands of nodes at shutdown costs no query per node for them).
    cache: dict[str, list[tuple[str, str, float]]] = s.info.setdefault("alert_grace", {})
    rows = cache.get(node.space_id)
    if rows is None:
        rows = cache[node.space_id] = [
            (g.scope, g.target, g.grace_seconds)
            for g in s.scalars(select(AlertGrace).where(AlertGrace.space_id == node.space_id))
        ]
    space = next((g for sc, _, g in rows if sc == "space"), None)
    node_g = next((g for sc, t, g in rows if sc == "node" and t == node.id), None)
    room_g: list[float] = []
    if any(sc == "room" for sc, _, _ in rows):
        rooms = set(outbox.node_rooms(s, node.id))
        room_g = [g for sc, t, g in rows if sc == "room" and t in rooms]
    return policy.grace_for(space, room_g, node_g, defaults["grace_seconds"])


def node_offline(
    s: Session,
    node: Node,
    cause: str,
    cause_code: str,
    expected_back_seconds: float | None,
    now: dt.datetime | None = None,
) -> None:
    """The node just went offline: watch it (presence's transaction)."""
    if not policy.watches(cause_code):
        return
    now = now or utcnow()
    grace = grace_of(s, node)
    due = policy.due_at(now.timestamp(), grace, expected_back_seconds)
    watch = s.get(ReachabilityWatch, node.id)
    if watch is None:
        watch = ReachabilityWatch(node_id=node.id, space_id=node.space_id)
        s.add(watch)
    watch.offline_at = now
    watch.due_at = dt.datetime.fromtimestamp(due, dt.UTC)
    watch.grace_seconds = grace
    watch.cause = cause[:500]
    watch.cause_code = cause_code
    watch.expected_back_at = (
        now + dt.timedelta(seconds=expected_back_seconds)
        if expected_back_seconds is not None
        else None
    )


def node_live(s: Session, node: Node, now: dt.datetime | None = None) -> None:
    """The node is back (presence's transaction): forget its watch (within
    the grace: nothing was raised) and resolve its open incident, with duration."""
    s.execute(delete(ReachabilityWatch).where(ReachabilityWatch.node_id == node.id))
    alert = s.scalar(
        select(Alert).where(
            Alert.node_id == node.id, Alert.name == policy.REACHABILITY, Alert.status == "active"
        )
    )
    if alert is None:
        return
    now = now or utcnow()
    alert.status, alert.resolved_at = "resolved", now
    outbox.enqueue(s, alert, "resolved", now, limits)


def next_due(s: Session) -> dt.datetime | None:
    value = s.scalar(select(ReachabilityWatch.due_at).order_by(ReachabilityWatch.due_at).limit(1))
    return aware(value) if value else None


def raise_due(db: Database, now: dt.datetime, process_started: float) -> list[str]:
    """Raise the alerts whose time came; their ids."""
    with db.session() as s:
        due = s.execute(
            select(
                ReachabilityWatch.node_id,
                ReachabilityWatch.due_at,
                ReachabilityWatch.cause_code,
                ReachabilityWatch.grace_seconds,
            )
            .where(ReachabilityWatch.due_at <= now)
            .order_by(ReachabilityWatch.due_at)
            .limit(500)
        ).all()
    raised: list[str] = []
    for node_id, due_at, code, grace in due:
        if policy.effective_due(_ts(due_at), code, grace, process_started) > now.timestamp():
            continue
        with db.session(write_lock=True) as s:
            alert = _raise_one(s, node_id, now)
            if alert is not None:
                raised.append(alert.id)
                log.info(
                    "reachability alert: node %s (%s) offline since %s",
                    alert.node_id,
                    meta.for_log(alert.hostname),
                    alert.offline_at.isoformat(),
                )
    return raised


def _ts(value: dt.datetime) -> float:
    return aware(value).timestamp()


def _raise_one(s: Session, node_id: str, now: dt.datetime) -> Alert | None:
    # Node first, then watch: the order presence locks them in.
    node = s.get(Node, node_id, with_for_update=True)
    watch = s.get(ReachabilityWatch, node_id, with_for_update=True)
    if node is None or watch is None or _ts(watch.due_at) > now.timestamp():
        return None
    s.delete(watch)
    if node.state == NodeState.LIVE:
        return None  # back already (a watch left behind): nothing to raise
    open_alert = s.scalar(
        select(Alert.id).where(
            Alert.node_id == node_id, Alert.name == policy.REACHABILITY, Alert.status == "active"
        )
    )
    if open_alert is not None:
        return None  # one alert per incident
    if node.parent_id is not None:
        parent = s.get(Node, node.parent_id)
        if parent is not None and parent.state != NodeState.LIVE:
            return None  # a child of an offline parent: the parent's alert is the one
    summary = f"{node.hostname} is unreachable: {watch.cause or 'offline'}"
    if watch.expected_back_at is not None:
        back = aware(watch.expected_back_at).isoformat()
        summary += f" (planned stop, expected back at {back})"
    alert = Alert(
        space_id=node.space_id,
        node_id=node.id,
        hostname=node.hostname,
        name=policy.REACHABILITY,
        severity=policy.severity(watch.cause_code),
        status="active",
        summary=summary,
        offline_at=watch.offline_at,
        raised_at=now,
    )
    s.add(alert)
    s.flush()
    outbox.enqueue(s, alert, "raised", now, limits)
    return alert
