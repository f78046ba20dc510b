"""A node's lifecycle fields in the API's node answer (`store.nodes.node_json`):
its key's age (tether.cloud.key_rotation), a planned stop
(tether.cloud.planned_stops) and a clone conflict (tether.cloud.link.clones).
Imports no store or link module, so node_json can call it."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from tether.cloud import planned_stops
from tether.cloud.models import Node, utcnow
from tether.cloud.secrets import aware, iso


def clone_conflict(node: Node) -> dict[str, Any] | None:
    """The node's clone conflict as stored (JSON), or None."""
    if not node.clone_conflict:
        return None
    try:
        value = json.loads(node.clone_conflict)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def key_created_at(node: Node) -> dt.datetime:
    """When the node's current key was registered: its last rotation, else its claim."""
    return aware(node.key_created_at or node.claimed_at)


def fields(node: Node, now: dt.datetime | None = None) -> dict[str, Any]:
    created = key_created_at(node)
    return {
        "key_created_at": iso(created),
        "key_age_seconds": max(0, int(((now or utcnow()) - created).total_seconds())),
        "previous_key_sha256": node.previous_key_sha256,
        **planned_stops.fields(node),
        "clone_conflict": clone_conflict(node),
    }
