"""The audit log: who did what in a Space.

Every change to who may enroll or act (claiming tokens, members, roles) and to
which nodes exist (claimed, re-keyed, removed by a person or a policy) writes
one row with `record`, in the transaction that makes the change, so the log
and the change commit together or not at all. Space admins read it
(`GET /api/v1/spaces/{space_id}/audit`, the UI's Audit log page). It is
bounded like node_events (tether.cloud.retention): none older than
`--audit-days`, at most `--audit-rows-per-space` per Space.

`actor` is who did it: a user's email, `token:NAME` (a claim with that
claiming token), `policy:ephemeral` or `policy:stale` (the Cloud's sweeper),
`cli` (tether-cloud on the Cloud's machine) or `node:ID` (the node itself).
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, func, or_, select
from sqlalchemy.orm import Session

from tether.cloud import node_metadata
from tether.cloud.models import AuditEntry, utcnow
from tether.cloud.secrets import iso

# The actions written today; `record` takes any dotted name so a new one needs
# no change here, but the UI's filter menu offers these.
ACTIONS = (
    "token.created",
    "token.rotated",
    "token.revoked",
    "token.used",
    "node.claimed",
    "node.reclaimed",
    "node.rekeyed",
    "node.removed",
    "node.marked_stale",
    "member.invited",
    "member.invitation_revoked",
    "member.added",
    "member.removed",
    "member.role_changed",
    "space.stale_policy",
)
DEFAULT_LIMIT = 100
MAX_LIMIT = 500
MAX_DETAILS = 4000  # characters of JSON per entry

_written: set[str] = set()  # Spaces with entries since the last prune (this process)
_written_lock = threading.Lock()


def record(
    session: Session,
    space_id: str,
    actor: str,
    action: str,
    target: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> None:
    """Add one entry in the caller's transaction. `details` is a small JSON
    object (never a secret: token prefixes, not tokens)."""
    text = json.dumps(dict(details), sort_keys=True, default=str) if details else None
    if text is not None and len(text) > MAX_DETAILS:
        text = json.dumps({"truncated": text[:MAX_DETAILS]})
    session.add(
        AuditEntry(
            space_id=space_id,
            at=utcnow(),
            actor=node_metadata.clean(actor, 320) or "?",
            action=action[:40],
            target=None if target is None else node_metadata.clean(target, 200),
            details=text,
        )
    )
    with _written_lock:
        _written.add(space_id)


def take_written() -> list[str]:
    """The Spaces that wrote entries since the last call (this process)."""
    with _written_lock:
        out = list(_written)
        _written.clear()
    return out


def note_written(space_ids: list[str]) -> None:
    with _written_lock:
        _written.update(space_ids)


class BadFilter(ValueError):
    """A query parameter the log cannot use (answered as 400)."""


@dataclass(frozen=True)
class AuditQuery:
    actions: tuple[str, ...] = ()
    actor: str = ""
    since: dt.datetime | None = None
    before: int | None = None  # entry id: the page after the one that ended there
    limit: int = DEFAULT_LIMIT


def parse(params: Mapping[str, str]) -> AuditQuery:
    """`action` (comma-separated, exact or a prefix ending in `.`: `token.`),
    `actor` (exact, case-insensitive), `since` (ISO 8601 time), `before`
    (an entry id, for the next page), `limit` (1..MAX_LIMIT)."""

    def text(name: str, max_len: int) -> str:
        value = params.get(name, "").strip()
        if node_metadata.problem(value, max_len, required=False) is not None:
            raise BadFilter(f'"{name}": at most {max_len} printable characters.')
        return value

    actions = tuple(a.strip() for a in text("action", 400).split(",") if a.strip())
    actor = text("actor", 320)
    since = None
    if text("since", 40):
        try:
            since = dt.datetime.fromisoformat(params["since"].strip().replace("Z", "+00:00"))
        except ValueError:
            raise BadFilter(
                '"since" must be an ISO 8601 time, e.g. 2026-01-31T12:00:00Z.'
            ) from None
        if since.tzinfo is None:
            since = since.replace(tzinfo=dt.UTC)

    def number(name: str, default: int | None, top: int) -> int | None:
        raw = text(name, 20)
        if not raw:
            return default
        if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= top:
            raise BadFilter(f'"{name}" must be a whole number from 1 to {top}.')
        return int(raw)

    limit = number("limit", DEFAULT_LIMIT, MAX_LIMIT)
    return AuditQuery(
        actions=actions,
        actor=actor,
        since=since,
        before=number("before", None, 2**62),
        limit=limit or DEFAULT_LIMIT,
    )


def _select(space_id: str, q: AuditQuery) -> Select[AuditEntry]:
    stmt = select(AuditEntry).where(AuditEntry.space_id == space_id)
    if q.actions:
        exact = [a for a in q.actions if not a.endswith(".")]
        prefixes = [a for a in q.actions if a.endswith(".")]
        conds: list[ColumnElement[bool]] = [AuditEntry.action.in_(exact)] if exact else []
        conds += [AuditEntry.action.startswith(p, autoescape=True) for p in prefixes]
        stmt = stmt.where(or_(*conds))
    if q.actor:
        stmt = stmt.where(func.lower(AuditEntry.actor) == q.actor.lower())
    if q.since is not None:
        stmt = stmt.where(AuditEntry.at >= q.since)
    if q.before is not None:
        stmt = stmt.where(AuditEntry.id < q.before)
    return stmt.order_by(AuditEntry.id.desc())


def page(s: Session, space_id: str, q: AuditQuery) -> tuple[list[AuditEntry], int | None]:
    """Newest first: up to `q.limit` entries, and the `before` of the next
    page (None when this is the last)."""
    rows = list(s.scalars(_select(space_id, q).limit(q.limit + 1)))
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    return rows, (rows[-1].id if more and rows else None)


def entry_json(e: AuditEntry) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": iso(e.at),
        "actor": e.actor,
        "action": e.action,
        "target": e.target,
        "details": json.loads(e.details) if e.details else None,
    }
