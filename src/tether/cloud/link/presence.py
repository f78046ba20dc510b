"""Presence: the one owner of the session rule and of every presence write.

Each link gets a session id. The node's row records its live session and the
process holding it (`nodes.link_process`):

- `live` when Hello arrives, with its cause (connected, or replaced a live
  session: a `duplicate` event records both addresses and host fingerprints);
- `offline` when a link closes, with its cause: only the close of the node's
  current session takes it offline (`is_current`), so a late close of an old
  session changes nothing.

Everything here runs in a thread (the database is synchronous).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, delete, insert, select, update
from sqlalchemy.orm import Session, lazyload

from tether.cloud import agent_labels, planned_stops
from tether.cloud import node_metadata as meta
from tether.cloud.alerts import policy, reachability
from tether.cloud.db import Database
from tether.cloud.link import clones, processes
from tether.cloud.models import Node, NodeEvent, ReachabilityWatch, utcnow
from tether.cloud.secret_store import ResumeGrant
from tether.cloud.secrets import aware
from tether.cloud.store import nodes as node_store
from tether.protocol import states
from tether.protocol.frames import Hello
from tether.protocol.link import describe_close
from tether.protocol.states import NodeState

_CHUNK = 500  # ids per IN (...) query
# Presence never needs a node's rooms; skip their extra SELECT.
NO_ROOMS = [lazyload(Node.rooms)]


def is_current(node: Node, session_id: str | None) -> bool:
    """The session rule: a close of `session_id` takes the node offline only
    while that is its live session. None means whichever session is live (its
    Cloud process died, or the Cloud restarted)."""
    return node.state == NodeState.LIVE and (
        session_id is None or node.connected_session_id == session_id
    )


def _fingerprint(
    address: str | None, machine_id: str | None, boot_id: str | None
) -> dict[str, Any]:
    return {"address": address, "machine_id": machine_id or None, "boot_id": boot_id or None}


@dataclass
class Connected:
    hostname: str
    space_id: str
    duplicate: dict[str, Any] | None
    # Set when the link was refused: its identity is live on another host (clones).
    conflict: dict[str, Any] | None = None


@dataclass(frozen=True)
class ConnectRecord:
    """A link that sent its Hello, to be recorded live."""

    node_id: str
    session_id: str
    hello: Hello
    address: str
    process_id: str
    grace_seconds: float = 60.0
    # The node's next resume token, written with the connection (secret_store).
    resume: ResumeGrant | None = None
    # The live link of another host did not answer a probe (clones.probe): replace it.
    current_unresponsive: bool = False


@dataclass(frozen=True)
class DisconnectRecord:
    """A closed link, to be recorded offline if it is still the node's session."""

    node_id: str
    session_id: str
    cause: str
    cause_code: str
    expected_back_seconds: float | None
    planned_reason: str | None = None  # a Goodbye's reason (planned_stops)


def db_connect(s: Session, rec: ConnectRecord) -> Connected | None:
    """Mark the node live for this session, refresh its metadata from Hello and
    record a duplicate when another session was live (on a Cloud process that
    is still beating). None if the node is gone."""
    node_id, session_id, hello, address = rec.node_id, rec.session_id, rec.hello, rec.address
    node = s.get(Node, node_id, with_for_update=True, options=NO_ROOMS)
    if node is None:
        return None
    duplicate = None
    now = utcnow()
    conflict = clones.check(
        s, node, session_id, hello, address, now, rec.grace_seconds, rec.current_unresponsive
    )
    if conflict is not None:  # live on another host: keep it, refuse this one
        return Connected(node.hostname, node.space_id, None, conflict)
    if (
        node.state == NodeState.LIVE
        and node.connected_session_id not in (None, session_id)
        and not processes.process_alive(s, node.link_process, now, rec.grace_seconds)
    ):
        # Its link died with its Cloud process (killed before the others
        # noticed): a reconnect, not a duplicate; the gap is on record.
        _lost_with_process(s, node)
    if node.state == NodeState.LIVE and node.connected_session_id not in (None, session_id):
        duplicate = {
            "previous": {
                "session_id": node.connected_session_id,
                **_fingerprint(node.last_address, node.machine_id, node.boot_id),
            },
            "current": {
                "session_id": session_id,
                **_fingerprint(address, hello.machine_id, hello.boot_id),
            },
            "same_host": bool(hello.machine_id)
            and hello.machine_id == node.machine_id
            and hello.boot_id == node.boot_id,
        }
        node.duplicate_detected_at = now
        node.duplicate_detail = json.dumps(duplicate)
        node_store.record_event(
            s,
            node,
            "duplicate",
            cause=f"a second link for this node from {address} replaced the one from "
            f"{node.last_address} (cloned machine or copied cloud.d?)",
            detail=duplicate,
        )
    # `hello` was sanitized on arrival (meta.clean_hello): stored as it is.
    node.hostname = hello.hostname or node.hostname
    node.os = hello.os or None
    node.agent_version = hello.agent_version or None
    node.machine_id = hello.machine_id or None
    node.boot_id = hello.boot_id or None
    if hello.machine_guid:
        node.machine_guid = hello.machine_guid
    node.link_process = rec.process_id
    if rec.resume is not None:
        rec.resume.write(s)
    agent_labels.apply(s, node, hello.labels)  # [host labels]: rule rooms follow
    planned_stops.clear(node)
    cause = f"replaced: a new link from {address}" if duplicate else f"connected from {address}"
    node_store.set_state(
        s,
        node,
        NodeState.LIVE,
        cause,
        session_id=session_id,
        address=address[:64],
        detail={
            "cause_code": states.CAUSE_REPLACED if duplicate else states.CAUSE_CONNECTED,
            "session_id": session_id,
            "address": address,
            "agent_version": hello.agent_version,
        },
    )
    reachability.node_live(s, node)  # back: no alert, or its incident resolved
    return Connected(node.hostname, node.space_id, duplicate)


def db_disconnect(s: Session, rec: DisconnectRecord) -> bool:
    """Mark the node offline if `rec.session_id` is still its live session."""
    node = s.get(Node, rec.node_id, with_for_update=True, options=NO_ROOMS)
    if node is None:
        return False
    return go_offline(
        s,
        node,
        rec.session_id,
        rec.cause,
        rec.cause_code,
        rec.expected_back_seconds,
        rec.planned_reason,
    )


def go_offline(
    s: Session,
    node: Node,
    session_id: str | None,
    cause: str,
    cause_code: str,
    expected_back_seconds: float | None = None,
    planned_reason: str | None = None,
) -> bool:
    """Record the node offline with its cause, if `session_id` is current
    (`is_current`); whether it was. `planned_reason`: a Goodbye's."""
    if not is_current(node, session_id):
        return False
    detail: dict[str, Any] = {"cause_code": cause_code, "session_id": node.connected_session_id}
    if expected_back_seconds is not None:
        detail["expected_back_seconds"] = expected_back_seconds
    node_store.set_state(s, node, NodeState.OFFLINE, cause, session_id=session_id, detail=detail)
    node.link_process = None
    # From the offline time itself, so the return is exactly that many seconds later.
    planned_stops.record(node, planned_reason, expected_back_seconds, aware(node.state_since))
    reachability.node_offline(s, node, cause, cause_code, expected_back_seconds)  # grace starts
    return True


def db_mark_offline(
    db: Database,
    sessions: dict[str, str],
    cause: str,
    cause_code: str,
    expected_back_seconds: float | None = None,
) -> list[str]:
    """Bulk, for a stopping Cloud: take these (node id -> session) offline in
    one transaction, with set statements instead of a row object per node (one
    UPDATE of the nodes, one multi-row INSERT of their state events and one of
    their reachability watches per chunk). Same rule and same rows as
    `go_offline`: a node whose live session is another (it moved) is left
    alone. The ids that changed."""
    changed: list[str] = []
    ids = sorted(sessions)  # one lock order for processes sharing PostgreSQL
    now = utcnow()
    with db.session(write_lock=True) as s:
        for i in range(0, len(ids), _CHUNK):
            chunk = ids[i : i + _CHUNK]
            rows = s.execute(
                select(Node.id, Node.space_id, Node.connected_session_id)
                .where(Node.id.in_(chunk), Node.state == NodeState.LIVE.value)
                .with_for_update()
            ).all()
            mine = [(nid, space) for nid, space, sid in rows if sid == sessions[nid]]
            if not mine:
                continue
            mine_ids = [nid for nid, _ in mine]
            s.execute(
                update(Node)
                .where(Node.id.in_(mine_ids))
                .values(
                    state=NodeState.OFFLINE.value,
                    state_since=now,
                    state_cause=cause,
                    connected_session_id=None,
                    last_seen_at=now,
                    link_process=None,
                )
                .execution_options(synchronize_session=False)
            )
            events = []
            for nid, space in mine:
                detail: dict[str, Any] = {"cause_code": cause_code, "session_id": sessions[nid]}
                if expected_back_seconds is not None:
                    detail["expected_back_seconds"] = expected_back_seconds
                events.append(
                    {
                        "node_id": nid,
                        "space_id": space,
                        "at": now,
                        "kind": "state",
                        "state": NodeState.OFFLINE.value,
                        "cause": cause,
                        "detail": json.dumps(detail),
                    }
                )
            s.execute(insert(NodeEvent), events)
            node_store.note_written(mine_ids)
            _watch_offline(s, mine, now, cause, cause_code, expected_back_seconds)
            changed += mine_ids
    return changed


def _watch_offline(
    s: Session,
    nodes: list[tuple[str, str]],
    now: dt.datetime,
    cause: str,
    cause_code: str,
    expected_back_seconds: float | None,
) -> None:
    """`reachability.node_offline` for many (node id, space id) at once: their
    watches replaced by one DELETE and one multi-row INSERT."""
    if not policy.watches(cause_code):
        return
    watches = []
    for nid, space in nodes:
        # A transient row: grace_of reads only its id and Space (graces cached per session).
        grace = reachability.grace_of(s, Node(id=nid, space_id=space))
        due = policy.due_at(now.timestamp(), grace, expected_back_seconds)
        watches.append(
            {
                "node_id": nid,
                "space_id": space,
                "offline_at": now,
                "due_at": dt.datetime.fromtimestamp(due, dt.UTC),
                "grace_seconds": grace,
                "cause": cause[:500],
                "cause_code": cause_code,
                "expected_back_at": None
                if expected_back_seconds is None
                else now + dt.timedelta(seconds=expected_back_seconds),
            }
        )
    ids = [nid for nid, _ in nodes]
    s.execute(delete(ReachabilityWatch).where(ReachabilityWatch.node_id.in_(ids)))
    s.execute(insert(ReachabilityWatch), watches)


def _lost_with_process(s: Session, node: Node) -> None:
    """Record offline a node whose live link was held by a dead process."""
    go_offline(
        s,
        node,
        None,
        processes.CAUSE_PROCESS_LOST,
        states.CAUSE_CLOUD_CLOSED,
    )


def db_reap_dead_processes(
    db: Database, grace_seconds: float, own_process: str | None = None
) -> list[tuple[str, str]]:
    """Offline the live nodes whose Cloud process is dead (processes.py: no
    lease, or three beats missed), cause "Cloud process lost"; (node,
    session). `own_process`, the one asking, is alive whatever its last beat
    says (a sweep slowed down by a busy machine must not offline its own
    links: found by bench/reconnect_storm.py at load average 20). In bulk,
    like a stop (db_mark_offline: sorted ids, chunks), so reaping thousands
    of nodes neither takes a row object each nor deadlocks with the
    connects batched meanwhile (tether.cloud.batching sorts by node too)."""
    now = utcnow()
    with db.session() as s:
        alive = processes.alive_processes(s, now, grace_seconds)
        if own_process is not None:
            alive = alive | {own_process}
        dead: ColumnElement[bool] = Node.link_process.is_(None)
        if alive:
            dead = dead | Node.link_process.not_in(sorted(alive))
        rows = s.execute(
            select(Node.id, Node.connected_session_id).where(Node.state == NodeState.LIVE, dead)
        ).all()
    sessions = {nid: sid for nid, sid in rows if sid}
    changed = db_mark_offline(db, sessions, processes.CAUSE_PROCESS_LOST, states.CAUSE_CLOUD_CLOSED)
    # A live node without a session (not written by this version): one by one.
    orphans = [nid for nid, sid in rows if not sid]
    if orphans:
        with db.session(write_lock=True) as s:
            for nid in orphans:
                node = s.get(Node, nid, with_for_update=True, options=NO_ROOMS)
                if node is not None and node.state == NodeState.LIVE:
                    _lost_with_process(s, node)
                    changed.append(nid)
    with db.session(write_lock=True) as s:
        processes.forget_dead(s, now - dt.timedelta(seconds=grace_seconds))
    return [(nid, sessions.get(nid, "")) for nid in changed]


def db_mark_all_offline(db: Database, cause: str) -> list[tuple[str, str]]:
    """Single-process start: no link survived the last process."""
    changed: list[tuple[str, str]] = []
    with db.session(write_lock=True) as s:
        for node in s.scalars(select(Node).where(Node.state == NodeState.LIVE).with_for_update()):
            session = node.connected_session_id or ""
            if go_offline(s, node, None, cause, states.CAUSE_CLOUD_CLOSED):
                changed.append((node.id, session))
    return changed


def db_current_sessions(db: Database, node_ids: list[str]) -> dict[str, str | None]:
    """node id -> its connected session id, for the ids that still exist."""
    out: dict[str, str | None] = {}
    with db.session() as s:
        for i in range(0, len(node_ids), _CHUNK):
            rows = s.execute(
                select(Node.id, Node.connected_session_id).where(
                    Node.id.in_(node_ids[i : i + _CHUNK])
                )
            )
            out.update({nid: sid for nid, sid in rows})
    return out


def db_reassert_live(db: Database, node_id: str, session_id: str, process_id: str) -> bool:
    """Mark live again a node whose link is up but was recorded offline."""
    with db.session(write_lock=True) as s:
        node = s.get(Node, node_id, with_for_update=True, options=NO_ROOMS)
        if node is None or node.connected_session_id is not None:
            return False
        node.link_process = process_id
        node_store.set_state(
            s,
            node,
            NodeState.LIVE,
            "link still up",
            session_id=session_id,
            detail={"cause_code": states.CAUSE_CONNECTED, "session_id": session_id},
        )
        reachability.node_live(s, node)
        return True


def close_cause(code: int, reason: str) -> tuple[str, str]:
    """The cause (text, code) of a link the agent closed or lost."""
    if code in (1005, 1006):
        return (
            "link lost (no close frame: agent killed, network or proxy cut, or keepalive timeout)",
            states.CAUSE_KEEPALIVE,
        )
    if code == 1009:
        return "closed: the agent sent a frame over the size limit (1009)", states.CAUSE_CLOSED
    text = f"closed by the agent: {describe_close(code)} ({code})"
    reason = meta.clean(reason, 120)  # the agent's words, stored and shown
    if reason:
        text += f": {reason}"
    return text, states.CAUSE_CLOSED
