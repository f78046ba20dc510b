"""Labels from the agent's `[host labels]`, as the link carries them (Hello
and NodeUpdate `labels`, docs/protocol.md): stored with source `agent`
(tether.cloud.store.labels) and the node's rule rooms re-evaluated
(tether.cloud.room_rules), in the caller's transaction.

The link never refuses a node for its metadata, so labels breaking the rule
(tether.protocol.labels) are dropped, not refused. `None` (an agent that
sends no labels) leaves the agent labels as they are.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy.orm import Session

from tether.cloud import room_rules
from tether.cloud.models import Node
from tether.cloud.store import labels as label_store
from tether.protocol import labels as label_rules


def apply(s: Session, node: Node, labels: Mapping[str, str] | None) -> bool:
    """Replace the node's agent labels; True if they changed (its rule rooms
    were then re-evaluated)."""
    if labels is None:
        return False
    if not label_store.set_source(s, node.id, "agent", label_rules.clean(labels)):
        return False
    room_rules.apply_to_node(s, node.id, node.space_id)
    return True
