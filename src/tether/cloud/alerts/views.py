"""The alerts a Space sees, for the API and the UI alike: its reachability
alerts (table `alerts`) and its agents' alerts, read from their recorded
transitions (node_events of kind "alert": names and statuses, never values).
An agent alert is active while its latest transition is to warning or critical."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tether.cloud.alerts import policy
from tether.cloud.models import Alert, Node, NodeEvent, NodeRoom
from tether.cloud.secrets import iso

AGENT_EVENTS_SCANNED = 20_000  # newest alert transitions read per Space
ACTIVE_AGENT = ("warning", "critical")


@dataclass(frozen=True)
class Filter:
    room: str | None = None
    node: str | None = None
    severity: str | None = None

    @staticmethod
    def of(params: Any) -> Filter:
        def one(name: str) -> str | None:
            value = params.get(name)
            return str(value).strip().lower() or None if value else None

        severity = one("severity")
        if severity is not None and severity not in policy.SEVERITIES:
            raise ValueError(f"severity must be one of {', '.join(policy.SEVERITIES)}")
        return Filter(one("room"), one("node"), severity)


def _nodes_in_room(s: Session, room_id: str) -> set[str]:
    return set(s.scalars(select(NodeRoom.node_id).where(NodeRoom.room_id == room_id)))


def active(s: Session, space_id: str, f: Filter = Filter()) -> list[dict[str, Any]]:
    """Every active alert of the Space, critical first, newest first."""
    only = _nodes_in_room(s, f.room) if f.room else None
    out: list[dict[str, Any]] = []
    # Joined with the node: a removed node's incident is over.
    for a in s.scalars(
        select(Alert)
        .join(Node, Node.id == Alert.node_id)
        .where(Alert.space_id == space_id, Alert.status == "active")
    ):
        out.append(reachability_json(a))
    out += agent_alerts(s, space_id)
    out = [
        a
        for a in out
        if (only is None or a["node"]["id"] in only)
        and (f.node is None or a["node"]["id"] == f.node)
        and (f.severity is None or a["severity"] == f.severity)
    ]
    crit = [a for a in out if a["severity"] == "critical"]
    rest = [a for a in out if a["severity"] != "critical"]
    return sorted(crit, key=_since, reverse=True) + sorted(rest, key=_since, reverse=True)


def _since(a: dict[str, Any]) -> str:
    return str(a["since"] or "")


def reachability_json(a: Alert) -> dict[str, Any]:
    return {
        "id": a.id,
        "source": "cloud",
        "name": a.name,
        "chart": None,
        "severity": a.severity,
        "status": a.status,
        "summary": a.summary,
        "node": {"id": a.node_id, "hostname": a.hostname},
        "since": iso(a.offline_at),
        "raised_at": iso(a.raised_at),
        "resolved_at": iso(a.resolved_at),
    }


def agent_alerts(s: Session, space_id: str) -> list[dict[str, Any]]:
    latest: dict[tuple[str, str, str], tuple[NodeEvent, dict[str, Any]]] = {}
    rows = s.scalars(
        select(NodeEvent)
        .where(NodeEvent.space_id == space_id, NodeEvent.kind == "alert")
        .order_by(NodeEvent.id.desc())
        .limit(AGENT_EVENTS_SCANNED)
    )
    for ev in rows:
        d = json.loads(ev.detail or "{}")
        key = (ev.node_id, str(d.get("name")), str(d.get("chart")))
        latest.setdefault(key, (ev, d))  # newest first: the first seen is the latest
    hosts = dict(
        s.execute(
            select(Node.id, Node.hostname).where(Node.id.in_({k[0] for k in latest} or {""}))
        ).all()
    )
    out = []
    for (node_id, name, chart), (ev, d) in latest.items():
        status = str(d.get("new_status"))
        if status not in ACTIVE_AGENT or node_id not in hosts:
            continue
        out.append(
            {
                "id": f"agent:{ev.id}",
                "source": "agent",
                "name": name,
                "chart": chart,
                "severity": status,
                "status": "active",
                "summary": ev.cause or "",
                "node": {"id": node_id, "hostname": hosts[node_id]},
                "since": iso(ev.at),
                "raised_at": iso(ev.at),
                "resolved_at": None,
            }
        )
    return out


def counts_per_node(s: Session, space_id: str) -> dict[str, dict[str, int]]:
    """node id -> {"warning": n, "critical": n} of its active alerts."""
    out: dict[str, Counter[str]] = {}
    for a in active(s, space_id):
        out.setdefault(a["node"]["id"], Counter())[a["severity"]] += 1
    return {k: dict(v) for k, v in out.items()}


def history(s: Session, space_id: str, node_id: str, limit: int = 200) -> list[dict[str, Any]]:
    """A node's alert transitions, newest first: its agent's and the Cloud's."""
    out: list[dict[str, Any]] = []
    for ev in s.scalars(
        select(NodeEvent)
        .where(
            NodeEvent.node_id == node_id, NodeEvent.space_id == space_id, NodeEvent.kind == "alert"
        )
        .order_by(NodeEvent.id.desc())
        .limit(limit)
    ):
        d = json.loads(ev.detail or "{}")
        out.append(
            {
                "at": iso(ev.at),
                "source": "agent",
                "name": d.get("name"),
                "chart": d.get("chart"),
                "old_status": d.get("old_status"),
                "new_status": d.get("new_status"),
            }
        )
    for a in s.scalars(
        select(Alert)
        .where(Alert.node_id == node_id, Alert.space_id == space_id)
        .order_by(Alert.raised_at.desc())
        .limit(limit)
    ):
        out.append(
            {
                "at": iso(a.raised_at),
                "source": "cloud",
                "name": a.name,
                "chart": None,
                "old_status": "clear",
                "new_status": a.severity,
            }
        )
        if a.resolved_at:
            out.append(
                {
                    "at": iso(a.resolved_at),
                    "source": "cloud",
                    "name": a.name,
                    "chart": None,
                    "old_status": a.severity,
                    "new_status": "clear",
                }
            )
    out.sort(key=lambda e: str(e["at"]), reverse=True)
    return out[:limit]
