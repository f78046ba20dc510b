"""How a child node (tether.cloud.children) is shown: "via PARENT" in the
Nodes view and on the node page, and its fields in the node's API answer."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import object_session

from tether.cloud.models import Node


def parent_hostname(node: Node) -> str:
    """The hostname of its parent for a child; "" for a node with its own link."""
    if node.parent_id is None:
        return ""
    s = object_session(node)
    parent = s.get(Node, node.parent_id) if s is not None else None
    return parent.hostname if parent is not None else ""


def fields(node: Node) -> dict[str, Any]:
    """The child fields of a node's API answer."""
    return {
        "parent_id": node.parent_id,
        "via": parent_hostname(node) or None,
        "clone_of": node.clone_of,
    }
