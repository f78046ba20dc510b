"""What the node page shows beside its charts: labels, the claiming token the
node used, the age of its key, the Cloud's alerts about it and its events.

All of it is read from the Cloud's database in the page's transaction (and
again by `state.json` when the page's live stream says the node changed).
Node-supplied text (hostname, label values, causes) is rendered as text.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tether.cloud.models import Alert, ClaimToken, ClaimTokenUse, Node, NodeEvent
from tether.cloud.secrets import iso
from tether.cloud.store import labels as label_store
from tether.cloud.store import nodes as node_store

EVENTS_SHOWN = 20
ALERTS_SHOWN = 20


def labels(s: Session, node_id: str) -> list[dict[str, str]]:
    """The node's labels, the winning source per key."""
    found = label_store.effective(label_store.of_node(s, node_id))
    return [{"key": k, "value": v["value"], "source": v["source"]} for k, v in found.items()]


def token_used(s: Session, node_id: str) -> dict[str, str] | None:
    """The claiming token of the node's latest claim (name, prefix, when)."""
    row = s.execute(
        select(ClaimTokenUse.at, ClaimToken.name, ClaimToken.prefix, ClaimToken.is_default)
        .join(ClaimToken, ClaimToken.id == ClaimTokenUse.token_id)
        .where(ClaimTokenUse.node_id == node_id)
        .order_by(ClaimTokenUse.at.desc(), ClaimTokenUse.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    name = "the Space's default token" if row.is_default else row.name
    return {"name": name, "prefix": row.prefix, "at": iso(row.at)}


def key_set_at(s: Session, node: Node) -> str:
    """When the node's current key was set: its last rotation (key_created_at,
    issue 13), else its latest claim (a reclaim replaces the key), else when it
    was first claimed."""
    rotated = getattr(node, "key_created_at", None)
    if rotated is not None:
        return iso(rotated) or ""
    at = s.scalar(
        select(NodeEvent.at)
        .where(NodeEvent.node_id == node.id, NodeEvent.kind.in_(("claimed", "reclaimed")))
        .order_by(NodeEvent.id.desc())
        .limit(1)
    )
    return iso(at or node.claimed_at) or ""


def alert_history(s: Session, node_id: str) -> list[dict[str, Any]]:
    """The Cloud's own alerts about the node (reachability), newest first."""
    rows = s.scalars(
        select(Alert)
        .where(Alert.node_id == node_id)
        .order_by(Alert.raised_at.desc())
        .limit(ALERTS_SHOWN)
    )
    return [
        {
            "name": a.name,
            "severity": a.severity,
            "status": a.status,
            "summary": a.summary,
            "raised_at": iso(a.raised_at),
            "resolved_at": iso(a.resolved_at) if a.resolved_at else "",
        }
        for a in rows
    ]


def events(s: Session, node_id: str) -> list[dict[str, Any]]:
    return [node_store.event_json(e) for e in node_store.events(s, node_id, EVENTS_SHOWN)]


def details(s: Session, node: Node) -> dict[str, Any]:
    """Everything above, for the page and for state.json."""
    return {
        "labels": labels(s, node.id),
        "token_used": token_used(s, node.id),
        "key_set_at": key_set_at(s, node),
        "alert_history": alert_history(s, node.id),
        "events": events(s, node.id),
    }
