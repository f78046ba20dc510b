"""Planned stops: the reason and expected return a node's Goodbye gave.

Presence records them on the node in the transaction that takes it offline
(`record`) and forgets them when it is live again (`clear`); the reachability
watch of that same transaction is due only at the expected return plus grace
(tether.cloud.alerts.policy.due_at). The API, the node page and the Nodes list
show `text`: "planned: upgrade, expected back at 14:05 UTC".
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from tether.cloud.models import Node, utcnow
from tether.cloud.secrets import aware, iso


def record(
    node: Node, reason: str | None, expected_back_seconds: float | None, now: dt.datetime
) -> None:
    """The node went offline; `reason` is its Goodbye's (None: not planned)."""
    node.planned_reason = reason[:32] if reason else None
    node.expected_back_at = (
        now + dt.timedelta(seconds=expected_back_seconds)
        if reason and expected_back_seconds is not None
        else None
    )


def clear(node: Node) -> None:
    node.planned_reason = None
    node.expected_back_at = None


def text(node: Node, now: dt.datetime | None = None) -> str:
    """ "planned: upgrade, expected back at 14:05 UTC" ("" when not planned)."""
    if not node.planned_reason or node.state != "offline":
        return ""
    out = f"planned: {node.planned_reason}"
    if node.expected_back_at is not None:
        back = aware(node.expected_back_at)
        out += f", expected back at {back:%H:%M} UTC"
        if back.date() != (now or utcnow()).date():
            out += f" on {back:%Y-%m-%d}"
        if back < (now or utcnow()):
            out += " (overdue)"
    return out


def fields(node: Node) -> dict[str, Any]:
    """The node API's `planned` field: None unless offline after a planned stop."""
    if not node.planned_reason or node.state != "offline":
        return {"planned": None}
    return {
        "planned": {
            "reason": node.planned_reason,
            "expected_back_at": iso(node.expected_back_at),
            "text": text(node),
        }
    }
