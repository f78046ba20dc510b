"""Nodes: listing, rooms, removal, and their event history.

The history is bounded (tether.cloud.retention): at most `per_node` events per
node and none older than the retention age. `record_event` notes which nodes
wrote events, so the count is enforced per writing node without scanning
every node's history.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from tether.cloud import child_fields, node_lifecycle, node_list
from tether.cloud.models import Node, NodeEvent, NodeRoom, Room, utcnow
from tether.cloud.secrets import aware, iso
from tether.cloud.store import spaces as space_store
from tether.protocol.states import NodeState

PRUNE_BATCH = 5000  # rows per DELETE, so the write lock is held briefly

_written: set[str] = set()  # nodes with events since the last prune
_written_lock = threading.Lock()


def record_event(
    s: Session,
    node: Node,
    kind: str,
    *,
    cause: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    s.add(
        NodeEvent(
            node_id=node.id,
            space_id=node.space_id,
            kind=kind,
            state=node.state,
            cause=cause,
            detail=json.dumps(detail) if detail else None,
        )
    )
    with _written_lock:
        _written.add(node.id)


def note_written(node_ids: list[str]) -> None:
    """Note these nodes again (a prune that failed part-way)."""
    with _written_lock:
        _written.update(node_ids)


def take_written() -> list[str]:
    """The nodes that recorded events since the last call (this process)."""
    with _written_lock:
        out = list(_written)
        _written.clear()
    return out


def nodes_over(s: Session, per_node: int) -> list[str]:
    """Every node with more than `per_node` events (one full pass, at start)."""
    return list(
        s.scalars(
            select(NodeEvent.node_id)
            .group_by(NodeEvent.node_id)
            .having(func.count(NodeEvent.id) > per_node)
        )
    )


def prune_node_events(s: Session, node_id: str, per_node: int) -> int:
    """Keep the newest `per_node` events of one node; the rows deleted."""
    ids = list(
        s.scalars(
            select(NodeEvent.id)
            .where(NodeEvent.node_id == node_id)
            .order_by(NodeEvent.at.desc(), NodeEvent.id.desc())
            .offset(per_node)
        )
    )
    for i in range(0, len(ids), PRUNE_BATCH):
        s.execute(delete(NodeEvent).where(NodeEvent.id.in_(ids[i : i + PRUNE_BATCH])))
    return len(ids)


def set_state(
    s: Session,
    node: Node,
    state: NodeState,
    cause: str,
    *,
    session_id: str | None = None,
    address: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Move a node to `state` with its cause, recorded as an event. Live
    records `session_id` as its connected session; offline clears it. Whether
    a close may take a node offline is tether.cloud.link.presence's rule."""
    state = NodeState(state)  # ValueError for an unknown state
    now = utcnow()
    if node.state != state:
        node.state_since = now
    node.state = state.value
    node.state_cause = cause
    if state is NodeState.LIVE:
        node.connected_session_id = session_id
        node.last_seen_at = now
        if address:
            node.last_address = address
    elif state is NodeState.OFFLINE:
        node.connected_session_id = None
        node.last_seen_at = now
    record_event(s, node, "state", cause=cause, detail=detail)


def in_space(s: Session, space_id: str, node_id: str) -> Node | None:
    node = s.get(Node, node_id.lower())
    return node if node is not None and node.space_id == space_id else None


def visible_to(s: Session, user_id: str, node_id: str) -> Node | None:
    """The node if `user_id` is a member (any role) of its Space, else None."""
    return s.scalar(
        select(Node).where(
            Node.id == node_id.lower(), space_store.member_of(user_id, Node.space_id)
        )
    )


def of_space(s: Session, space_id: str) -> list[Node]:
    return list(s.scalars(select(Node).where(Node.space_id == space_id).order_by(Node.hostname)))


def of_room(s: Session, room_id: str) -> list[Node]:
    return list(
        s.scalars(
            select(Node)
            .join(NodeRoom, NodeRoom.node_id == Node.id)
            .where(NodeRoom.room_id == room_id)
            .order_by(Node.hostname)
        )
    )


def add_to_room(s: Session, node: Node, room: Room) -> bool:
    if s.get(NodeRoom, (node.id, room.id)) is not None:
        return False
    s.add(NodeRoom(node_id=node.id, room_id=room.id))
    s.flush()
    return True


def remove_from_room(s: Session, node: Node, room: Room) -> bool:
    result = s.execute(
        delete(NodeRoom).where(NodeRoom.node_id == node.id, NodeRoom.room_id == room.id)
    )
    return bool(getattr(result, "rowcount", 0))


def remove(s: Session, node: Node, by: str | None) -> None:
    """Delete the node (its public key goes with it, so it can no longer
    authenticate); the removal event stays in the history."""
    record_event(s, node, "removed", cause=f"removed by {by}" if by else "removed")
    s.delete(node)
    s.flush()


def events(s: Session, node_id: str, limit: int = 50) -> list[NodeEvent]:
    return list(
        s.scalars(
            select(NodeEvent)
            .where(NodeEvent.node_id == node_id)
            .order_by(NodeEvent.at.desc(), NodeEvent.id.desc())
            .limit(limit)
        )
    )


def node_json(node: Node) -> dict[str, Any]:
    return {
        "id": node.id,
        "hostname": node.hostname,
        "state": node.state,
        "state_since": iso(node.state_since),
        "state_cause": node.state_cause,
        "rooms": sorted(r.id for r in node.rooms),
        "claimed_at": iso(node.claimed_at),
        "os": node.os,
        "agent_version": node.agent_version,
        "machine_guid": node.machine_guid,
        "public_key_sha256": node.public_key_sha256,
        "last_address": node.last_address,
        "last_seen_at": iso(node.last_seen_at),
        # From the link: the live session, host fingerprints from Hello, and
        # the last time a second link for this identity showed up.
        "session_id": node.connected_session_id,
        "machine_id": node.machine_id,
        "boot_id": node.boot_id,
        "duplicate_detected_at": iso(node.duplicate_detected_at),
        "duplicate": json.loads(node.duplicate_detail) if node.duplicate_detail else None,
        # Lifecycle (tether.cloud.stale_nodes): removed after this long not live,
        # and when the Space's stale policy marked it.
        "ephemeral_ttl": node.ephemeral_ttl_seconds,
        "stale_marked_at": iso(node.stale_marked_at),
        # Key age, planned stop, clone conflict (issue 13).
        **node_lifecycle.fields(node),
        # A child streaming to a parent (tether.cloud.children): parent_id, via, clone_of.
        **child_fields.fields(node),
    }


def event_json(ev: NodeEvent) -> dict[str, Any]:
    return {
        "at": iso(ev.at),
        "kind": ev.kind,
        "state": ev.state,
        "cause": ev.cause,
        "detail": json.loads(ev.detail) if ev.detail else None,
    }


# --- the Nodes list (tether.cloud.node_list builds the statements) -----------


def list_page(
    s: Session, space_id: str, room_id: str | None, query: node_list.NodeQuery
) -> tuple[list[Node], int]:
    """One page of a Space's (or room's) nodes and how many match in all;
    node_list.BadQuery when a `room` filter is not a room of the Space."""
    if query.rooms:
        have = set(s.scalars(node_list.rooms_select(space_id, query)))
        node_list.check_rooms(space_id, query, have)
    found = list(s.scalars(node_list.page_select(space_id, room_id, query)))
    if query.paged and (query.page > 1 or len(found) == query.per_page):
        total = int(s.scalar(node_list.count_select(space_id, room_id, query)) or 0)
    else:  # the whole answer is on this page: no second query
        total = query.offset + len(found)
    return found, total


def severities(s: Session, space_id: str, node_ids: list[str] | None) -> dict[str, str]:
    """node id -> its worst active alert (critical, warning, clear), in one
    statement (node_list.severity_select); every node of the Space when None."""
    return {nid: sev for nid, sev in s.execute(node_list.severity_select(space_id, node_ids))}


def facets(s: Session, space_id: str, room_id: str | None) -> dict[str, list[tuple[str, int]]]:
    """OS and agent-version values present, with counts, for the filter menus
    (the node_list.MAX_FACETS most common of each)."""
    counts: dict[str, dict[str, int]] = {"os": {}, "agent_version": {}}
    for os_name, version, n in s.execute(node_list.facet_select(space_id, room_id)):
        for key, value in (("os", os_name), ("agent_version", version)):
            if value is not None:
                counts[key][value] = counts[key].get(value, 0) + int(n)
    out: dict[str, list[tuple[str, int]]] = {}
    for key, c in counts.items():
        common = sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[: node_list.MAX_FACETS]
        out[key] = sorted(common)  # shown in alphabetical order
    return out


def shared_hostnames(s: Session, space_id: str, hostnames: list[str]) -> set[str]:
    """Which of these hostnames more than one node of the Space has."""
    if not hostnames:
        return set()
    return set(
        s.scalars(
            select(Node.hostname)
            .where(Node.space_id == space_id, Node.hostname.in_(set(hostnames)))
            .group_by(Node.hostname)
            .having(func.count(Node.id) > 1)
        )
    )


def expected_back(s: Session, nodes: list[Node]) -> dict[str, dt.datetime]:
    """When offline nodes said they would be back (their Goodbye's
    expected_back_seconds, kept on the state event that took them offline)."""
    by_id = {n.id: n for n in nodes if n.state == NodeState.OFFLINE.value}
    offline = list(by_id)
    if not offline:
        return {}
    last = (
        select(func.max(NodeEvent.id))
        .where(NodeEvent.node_id.in_(offline), NodeEvent.kind == "state")
        .group_by(NodeEvent.node_id)
    )
    out: dict[str, dt.datetime] = {}
    for ev in s.scalars(select(NodeEvent).where(NodeEvent.id.in_(last))):
        try:
            seconds = json.loads(ev.detail or "{}").get("expected_back_seconds")
        except (ValueError, AttributeError):
            continue
        if ev.state == NodeState.OFFLINE.value and isinstance(seconds, int | float):
            since = aware(by_id[ev.node_id].state_since)  # when it went offline
            out[ev.node_id] = since + dt.timedelta(seconds=float(seconds))
    return out
