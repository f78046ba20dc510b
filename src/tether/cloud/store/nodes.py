"""Nodes: listing, rooms, removal, and their event history."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from tether.cloud.models import Node, NodeEvent, NodeRoom, Room, SpaceMember, utcnow
from tether.cloud.secrets import iso


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


def set_state(
    s: Session,
    node: Node,
    state: str,
    cause: str,
    *,
    session_id: str | None = None,
    address: str | None = None,
    detail: dict[str, Any] | None = None,
) -> bool:
    """Move a node to `state` ("live" or "offline") with its cause, recorded as
    an event. For the link: a close of session X only marks the node offline
    while X is still its connected session (pass session_id=X), so a late close
    of an old session never overrides a newer one. Returns whether it applied."""
    if state not in ("live", "offline", "unseen"):
        raise ValueError(f"unknown node state {state!r}")
    if state == "offline" and session_id is not None and node.connected_session_id != session_id:
        return False
    now = utcnow()
    if node.state != state:
        node.state_since = now
    node.state = state
    node.state_cause = cause
    if state == "live":
        node.connected_session_id = session_id
        node.last_seen_at = now
        if address:
            node.last_address = address
    elif state == "offline":
        node.connected_session_id = None
        node.last_seen_at = now
    record_event(s, node, "state", cause=cause, detail=detail)
    return True


def in_space(s: Session, space_id: str, node_id: str) -> Node | None:
    node = s.get(Node, node_id.lower())
    return node if node is not None and node.space_id == space_id else None


def visible_to(s: Session, user_id: str, node_id: str) -> Node | None:
    """The node if `user_id` is a member (any role) of its Space, else None."""
    node = s.get(Node, node_id.lower())
    if node is None:
        return None
    member = s.get(SpaceMember, (node.space_id, user_id))
    return node if member is not None else None


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
    }


def event_json(ev: NodeEvent) -> dict[str, Any]:
    return {
        "at": iso(ev.at),
        "kind": ev.kind,
        "state": ev.state,
        "cause": ev.cause,
        "detail": json.loads(ev.detail) if ev.detail else None,
    }
