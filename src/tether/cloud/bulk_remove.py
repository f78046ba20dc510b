"""Bulk remove: take every node of a Space that matches a filter out of it.

The filter is the Nodes list's (tether.cloud.node_list: `q`, `state`, `os`,
`agent_version`) plus two of its own:

- `label`: `key=value` (the node's winning value of the label, as room
  rules see it) or `key` (has the label at all); repeat for all of them;
- `not_seen_for_days`: not live, and last seen (or, never seen, claimed)
  more than N days ago.

At least one filter is required, so an empty form never removes the whole
Space. A dry run answers what would go; a run removes at most MAX_PER_CALL
nodes (call again for more), each audited (`node.removed` with the filter).
Used by `POST /api/v1/spaces/{space_id}/nodes/remove` and the UI's Remove
nodes page (tether.cloud.web.bulk_remove). The caller closes the removed
nodes' live links after the commit.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func
from sqlalchemy.orm import Session

from tether.cloud import audit, node_list, room_rules
from tether.cloud.auth import Principal
from tether.cloud.models import Node
from tether.cloud.store import labels as label_store
from tether.cloud.store import nodes as node_store
from tether.cloud.store.spaces import require_role
from tether.protocol.states import NodeState

MAX_PER_CALL = 5000
MAX_DAYS = 36500
LIST_FILTERS = ("q", "state", "os", "agent_version")
FILTERS = (*LIST_FILTERS, "label", "not_seen_for_days")


@dataclass(frozen=True)
class Filter:
    query: node_list.NodeQuery
    labels: tuple[tuple[str, str | None], ...] = ()
    not_seen_for_days: int | None = None

    def describe(self) -> dict[str, Any]:
        """The filter as given, for the audit entry and the answer."""
        out: dict[str, Any] = {k: v for k, v in self.query.params().items() if k in LIST_FILTERS}
        if self.labels:
            out["label"] = [k if v is None else f"{k}={v}" for k, v in self.labels]
        if self.not_seen_for_days is not None:
            out["not_seen_for_days"] = self.not_seen_for_days
        return out


def parse(params: Mapping[str, Sequence[str]]) -> Filter:
    """From query or form parameters (name -> values); ValueError (or
    node_list.BadQuery) naming the bad one."""
    query = node_list.parse(
        {k: list(v) for k, v in params.items() if k in LIST_FILTERS}, paged_by_default=False
    )
    labels: list[tuple[str, str | None]] = []
    for raw in params.get("label", ()):
        for item in (x for x in raw.split(",") if x.strip()):
            key, sep, value = item.partition("=")
            clean_key = label_store.check_key(key.strip())
            labels.append((clean_key, label_store.check_value(value, clean_key) if sep else None))
    days = None
    got = [v.strip() for v in params.get("not_seen_for_days", ()) if v.strip()]
    if got:
        if len(got) > 1 or not (got[0].isascii() and got[0].isdigit()):
            raise ValueError('"not_seen_for_days" must be one whole number of days.')
        days = int(got[0])
        if not 1 <= days <= MAX_DAYS:
            raise ValueError(f'"not_seen_for_days" must be 1 to {MAX_DAYS}.')
    f = Filter(query=query, labels=tuple(labels), not_seen_for_days=days)
    if not (query.q or query.states or query.os or query.agent_versions or labels or days):
        raise ValueError(
            "Give at least one filter (q, state, os, agent_version, label, not_seen_for_days): "
            "bulk remove never takes every node of the Space by default."
        )
    return f


def from_json(body: Mapping[str, Any]) -> Filter:
    """From a JSON body: each filter a string, a number or a list of strings."""
    params: dict[str, list[str]] = {}
    for name in FILTERS:
        value = body.get(name)
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str | int) and not isinstance(v, bool) for v in values):
            raise ValueError(f'"{name}" must be a string, a number or a list of strings.')
        params[name] = [str(v) for v in values]
    unknown = sorted(set(body) - set(FILTERS) - {"dry_run"})
    if unknown:
        raise ValueError(f"Unknown field {unknown[0]!r}; the filters are {', '.join(FILTERS)}.")
    return parse(params)


def matching(s: Session, space_id: str, f: Filter, now: dt.datetime, limit: int) -> list[Node]:
    """Up to `limit` nodes of the Space that match, in the Nodes list's order."""
    conds = [room_rules.node_has_label(k, v) for k, v in f.labels]
    if f.not_seen_for_days is not None:
        cutoff = now - dt.timedelta(days=f.not_seen_for_days)
        seen = func.coalesce(Node.last_seen_at, Node.claimed_at)
        conds.append(and_(Node.state != NodeState.LIVE.value, seen < cutoff))
    stmt = node_list.page_select(space_id, None, f.query).where(*conds).limit(limit)
    return list(s.scalars(stmt))


def run(
    s: Session, actor: Principal, space_id: str, f: Filter, now: dt.datetime, dry_run: bool
) -> dict[str, Any]:
    """Remove (or with `dry_run` only list) the matching nodes (manager).
    Answers {"dry_run", "count", "more", "nodes": [{id, hostname, state}], "filter"}."""
    space, _ = require_role(s, space_id, actor.user_id, "manager")
    found = matching(s, space.id, f, now, MAX_PER_CALL + 1)
    more = len(found) > MAX_PER_CALL
    found = found[:MAX_PER_CALL]
    nodes = [{"id": n.id, "hostname": n.hostname, "state": n.state} for n in found]
    if not dry_run:
        described = f.describe()
        for node in found:
            audit.record(
                s,
                space.id,
                actor.email,
                "node.removed",
                node.id,
                {"hostname": node.hostname, "why": "bulk remove", "filter": described},
            )
            node_store.remove(s, node, actor.email)
    return {
        "dry_run": dry_run,
        "count": len(nodes),
        "more": more,
        "nodes": nodes,
        "filter": f.describe(),
    }
