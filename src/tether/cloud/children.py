"""Children: nodes whose metrics stream to a parent agent and that reach the
Cloud through the parent's link (docs/protocol.md, children).

The parent's link sends `ChildrenUpdate` frames; each child becomes a node of
the parent's Space, stored with its parent (`nodes.parent_id`) and the
parent's name for it (`nodes.child_key`, the CHILD of `/host/CHILD/`):

- **Identity.** A child's node id is derived from its Space and its machine
  GUID (`child_node_id`), not from the parent: a child that moves to another
  parent of the Space keeps its node, its rooms and its history.
- **Presence.** A child is live while its parent's link is live and the
  parent says it streams; its session is the parent's link session. Only the
  child's current parent changes its state (a late "offline" from the parent
  it left changes nothing). A child that stops streaming goes offline and is
  watched for a reachability alert like any node; when the parent goes
  offline its children go offline with cause `parent_offline` and no watch of
  their own: the parent's alert is the one alert (`parent_offline`).
- **Clones.** Two hosts with one machine GUID are both kept: the parent
  names the second `GUID~HOSTNAME` (`clone_of` in the frame), and a GUID live
  under another parent with another hostname is kept as its own node too;
  either way the second node records `clone_of` and a `clone` event. Nothing
  is refused.
- **Rooms.** A new child joins the rooms its parent is in by hand (the claim's
  rooms, All nodes) and inherits the parent's labels (source `token`, the
  lowest rank), so the Space's room rules put it where they put its parent.
- **Relay.** A query for a child goes to its parent's link as
  `/host/CHILD/api/v1/NAME` (`route`).

Everything here runs in a thread (the database is synchronous).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tether.cloud import node_metadata as meta
from tether.cloud import room_rules
from tether.cloud.alerts import reachability
from tether.cloud.db import Database
from tether.cloud.link import presence
from tether.cloud.models import Node, NodeRoom
from tether.cloud.store import labels as label_store
from tether.cloud.store import nodes as node_store
from tether.protocol import states
from tether.protocol.frames import CHILD_STATES, ChildrenUpdate, ChildState
from tether.protocol.states import NodeState

log = logging.getLogger(__name__)

# The offline cause of a child whose parent went offline: no alert of its own.
CAUSE_PARENT_OFFLINE = "parent_offline"
# Child node ids: uuid5 in this namespace of "SPACE\nGUID" (or "SPACE\nGUID~HOSTNAME").
NAMESPACE = uuid.UUID("5d1c9b0e-7a0f-4c55-9a8e-1f2b3c4d5e6f")
MAX_KEY = 401
# The children one parent may bring into its Space (an agent keeps at most
# as many, agent/stream_parent.MAX_CHILDREN): a hostile or broken parent
# announcing new GUIDs frame after frame cannot fill the Space with nodes.
MAX_CHILDREN_PER_PARENT = 1000


def child_node_id(space_id: str, identity: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{space_id}\n{identity}"))


@dataclass(frozen=True)
class ChildrenRecord:
    """A ChildrenUpdate from the parent's link session `session_id`."""

    parent_id: str
    session_id: str
    update: ChildrenUpdate


def db_children_update(db: Database, rec: ChildrenRecord) -> int:
    """Apply one ChildrenUpdate; how many children it changed. Nothing when
    the link that sent it is no longer the parent's live session."""
    with db.session(write_lock=True) as s:
        parent = s.get(Node, rec.parent_id, with_for_update=True, options=presence.NO_ROOMS)
        if parent is None or not presence.is_current(parent, rec.session_id):
            return 0
        named: set[str] = set()
        changed = 0
        known = set(s.scalars(select(Node.id).where(Node.parent_id == parent.id)))
        turned_away = 0
        for entry in rec.update.children:
            if entry.state not in CHILD_STATES or not entry.id:
                continue  # a state from a newer parent: skipped, not refused
            room = len(known) < MAX_CHILDREN_PER_PARENT
            node = _child_node(s, parent, entry, may_add=room)
            if node is None:
                turned_away += entry.state == "live" and not room
                continue
            known.add(node.id)
            named.add(node.id)
            if entry.state == "live":
                changed += _live(s, parent, node, entry)
            else:
                why = "removed" if entry.state == "removed" else "stopped streaming"
                changed += _offline(s, node, f"{why} to its parent {parent.hostname}")
        if rec.update.full:  # children not named are no longer the parent's
            for node in _live_children(s, parent.id):
                if node.id not in named:
                    changed += _offline(s, node, f"no longer streams to {parent.hostname}")
        if turned_away:
            log.warning(
                "node %s announced %d more children than the %d a parent may have: "
                "not added (give some of its children another parent)",
                parent.id,
                turned_away,
                MAX_CHILDREN_PER_PARENT,
            )
        return changed


def db_parent_offline(db: Database, parent_id: str) -> int:
    """The parent's link closed: take its live children offline, unless the
    parent is live again (a newer link replaced the closed one). No watch: the
    parent's own reachability alert stands for them. How many went offline."""
    with db.session(write_lock=True) as s:
        parent = s.get(Node, parent_id, with_for_update=True, options=presence.NO_ROOMS)
        if parent is None or parent.state == NodeState.LIVE:
            return 0
        count = 0
        for node in _live_children(s, parent_id):
            node_store.set_state(
                s,
                node,
                NodeState.OFFLINE,
                f"its parent {parent.hostname} is offline",
                detail={"cause_code": CAUSE_PARENT_OFFLINE, "parent_id": parent_id},
            )
            node.link_process = None
            count += 1
        return count


def _live_children(s: Session, parent_id: str) -> list[Node]:
    return list(
        s.scalars(
            select(Node)
            .where(Node.parent_id == parent_id, Node.state == NodeState.LIVE.value)
            .order_by(Node.id)  # one lock order
            .with_for_update()
        )
    )


def _child_node(s: Session, parent: Node, entry: ChildState, may_add: bool) -> Node | None:
    """The child's node: found (moved here from another parent if it is not a
    clone), or made when the parent says it is live (an unknown child
    reported offline or removed is not made). `may_add`: whether the parent
    has room for one more child (else only its own children are found)."""
    key = entry.id[:MAX_KEY]
    hostname = meta.clean(entry.hostname, meta.MAX_HOSTNAME) or meta.clean(key, 64)
    primary = s.get(Node, child_node_id(parent.space_id, key), with_for_update=True)
    if primary is not None and primary.parent_id == parent.id:
        return primary
    clone_id = child_node_id(parent.space_id, f"{key}~{hostname}")
    clone = s.get(Node, clone_id, with_for_update=True)
    if clone is not None and clone.parent_id == parent.id:
        return clone
    if entry.state != "live" or not may_add:
        return None  # only a child's current parent speaks for it
    if primary is not None:
        if primary.state == NodeState.LIVE and primary.hostname != hostname:
            # Live under another parent as another host: a second machine
            # with this GUID. Kept as its own node.
            return _make(s, parent, entry, clone_id, key, hostname, clone_of=primary.id)
        _move(s, parent, primary, key)
        return primary
    clone_of = None
    if entry.clone_of:  # the parent already told the two apart
        first = s.get(Node, child_node_id(parent.space_id, entry.clone_of[:MAX_KEY]))
        clone_of = first.id if first is not None else None
    return _make(
        s, parent, entry, child_node_id(parent.space_id, key), key, hostname, clone_of=clone_of
    )


def _make(
    s: Session,
    parent: Node,
    entry: ChildState,
    node_id: str,
    key: str,
    hostname: str,
    clone_of: str | None,
) -> Node:
    guid = meta.clean(entry.machine_guid, 64) or None
    if clone_of is None and guid:  # another child of the Space with this GUID
        clone_of = s.scalar(
            select(Node.id).where(
                Node.space_id == parent.space_id,
                Node.machine_guid == guid,
                Node.parent_id.is_not(None),
                Node.id != node_id,
            )
        )
    node = Node(
        id=node_id,
        space_id=parent.space_id,
        hostname=hostname,
        machine_guid=guid,
        public_key_pem="",  # no key: a child never authenticates, its parent does
        public_key_sha256="",
        parent_id=parent.id,
        child_key=key,
        clone_of=clone_of,
        state=NodeState.UNSEEN.value,
    )
    s.add(node)
    s.flush()
    node_store.record_event(
        s, node, "child", cause=f"announced by its parent {parent.hostname}", detail=_via(parent)
    )
    if clone_of is not None:
        node_store.record_event(
            s,
            node,
            "clone",
            cause=f"another host ({hostname}) uses the machine GUID of node {clone_of}: "
            "both are kept; give the clone its own GUID (remove its "
            "var/lib/tether/registry/tether.public.unique.id and restart it)",
            detail={"clone_of": clone_of, "machine_guid": guid},
        )
    _inherit(s, parent, node)
    return node


def _move(s: Session, parent: Node, node: Node, key: str) -> None:
    """The child streams to another parent now: same node, new parent."""
    old = node.parent_id
    node.parent_id, node.child_key = parent.id, key
    node_store.record_event(
        s,
        node,
        "child",
        cause=f"moved to the parent {parent.hostname}",
        detail={**_via(parent), "previous_parent_id": old},
    )
    _inherit(s, parent, node)


def _inherit(s: Session, parent: Node, node: Node) -> None:
    """The parent's manual rooms and its labels (lowest rank), then the rules."""
    manual = s.scalars(
        select(NodeRoom.room_id).where(NodeRoom.node_id == parent.id, NodeRoom.source == "manual")
    ).all()
    have = set(s.scalars(select(NodeRoom.room_id).where(NodeRoom.node_id == node.id)).all())
    s.add_all(NodeRoom(node_id=node.id, room_id=r) for r in manual if r not in have)
    labels = label_store.effective(label_store.of_node(s, parent.id))
    label_store.set_source(s, node.id, "token", {k: v["value"] for k, v in labels.items()})
    room_rules.apply_to_node(s, node.id, node.space_id)


def _via(parent: Node) -> dict[str, Any]:
    return {"parent_id": parent.id, "parent_hostname": parent.hostname}


def _live(s: Session, parent: Node, node: Node, entry: ChildState) -> int:
    node.hostname = meta.clean(entry.hostname, meta.MAX_HOSTNAME) or node.hostname
    node.os = meta.clean(entry.os, 200) or None
    node.agent_version = meta.clean(entry.agent_version, 64) or None
    node.boot_id = meta.clean(entry.boot_id, 64) or None
    node.link_process = parent.link_process
    session = parent.connected_session_id
    if node.state == NodeState.LIVE and node.connected_session_id == session:
        return 0
    node_store.set_state(
        s,
        node,
        NodeState.LIVE,
        f"live via {parent.hostname}",
        session_id=session,
        address=parent.last_address,
        detail={"cause_code": states.CAUSE_CONNECTED, **_via(parent)},
    )
    reachability.node_live(s, node)  # back: no alert, or its incident resolved
    return 1


def _offline(s: Session, node: Node, cause: str) -> int:
    """A child that stopped streaming while its parent is up: watched like any node."""
    return int(presence.go_offline(s, node, None, cause, states.CAUSE_CLOSED))


Route = tuple[str, str] | None
# Routes read in the last ROUTE_TTL seconds: a relay costs no query for them
# (a child that moved is reached through its new parent that much later).
ROUTE_TTL = 2.0
MAX_ROUTES = 10_000
_routes: dict[str, tuple[float, Route]] = {}


def cached_route(node_id: str, now: float) -> tuple[bool, Route]:
    """(found, route) from the routes read lately, without the database."""
    cached = _routes.get(node_id)
    if cached is not None and now - cached[0] < ROUTE_TTL:
        return True, cached[1]
    return False, None


def route_of(parent_id: str | None, child_key: str | None) -> Route:
    """Where a node's queries go, from its row: (parent's node id, `/host/CHILD`)
    for a child, None for a node with its own link."""
    if parent_id is None or not child_key:
        return None
    return str(parent_id), f"/host/{child_key}"


def route(db: Database, node_id: str, now: float) -> Route:
    """For a child: (its parent's node id, the path prefix `/host/CHILD`) its
    queries take; None for a node with its own link. `now`: monotonic seconds."""
    with db.session() as s:
        row = s.execute(select(Node.parent_id, Node.child_key).where(Node.id == node_id)).first()
    found = route_of(row.parent_id, row.child_key) if row is not None else None
    if len(_routes) >= MAX_ROUTES:
        _routes.clear()
    _routes[node_id] = (now, found)
    return found
