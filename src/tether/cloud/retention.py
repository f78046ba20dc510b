"""Bounded history: `node_events`, `claim_audit` and `audit_log` do not grow without limit.

A node can write events (alerts, state changes) and anyone can write claim
audit rows (failed claims); without a bound a flood fills the database. The
link sweeper calls `prune` every sweep, at most every 10 s:

- `node_events`: none older than `max_age_days` (default 30) and at most
  `events_per_node` (default 1,000) per node, the newest kept;
- `claim_audit`: none older than `max_age_days` and at most
  `claim_audit_rows` (default 100,000) in all, the newest kept;
- `audit_log` (tether.cloud.audit): none older than `audit_days` (default
  365) and at most `audit_rows_per_space` (default 100,000) per Space, the
  newest kept, checked for the Spaces that wrote since the last call (every
  Space at start), so one busy Space cannot push out another's history.

Set with `tether-cloud serve --history-days`, `--node-events-per-node`,
`--claim-audit-rows`, `--audit-days`, `--audit-rows-per-space`. Each DELETE
takes at most `PRUNE_BATCH` rows in its own transaction so the write lock is
held briefly.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from tether.cloud import audit
from tether.cloud.db import Database
from tether.cloud.models import AuditEntry, ClaimAudit, NodeEvent, utcnow
from tether.cloud.secrets import aware
from tether.cloud.store import nodes as node_store
from tether.cloud.store.nodes import PRUNE_BATCH


@dataclass(frozen=True)
class Retention:
    max_age_days: float = 30.0
    events_per_node: int = 1000
    claim_audit_rows: int = 100_000
    audit_days: float = 365.0
    audit_rows_per_space: int = 100_000


@dataclass
class Pruned:
    node_events: int = 0
    claim_audit: int = 0
    audit_log: int = 0


def prune(
    db: Database, policy: Retention, now: dt.datetime | None = None, every_node: bool = False
) -> Pruned:
    """Apply `policy`. The per-node count is checked for the nodes that wrote
    events since the last call, or for every node with `every_node` (at start)."""
    now = now or utcnow()
    cutoff = now - dt.timedelta(days=policy.max_age_days)
    out = Pruned()
    out.node_events = _in_batches(db, lambda s: _prune_older(s, NodeEvent, cutoff))
    if every_node:
        with db.session() as s:
            nodes = node_store.nodes_over(s, policy.events_per_node)
        node_store.take_written()
    else:
        nodes = node_store.take_written()
    for i, node_id in enumerate(nodes):
        try:
            with db.session(write_lock=True) as s:
                out.node_events += node_store.prune_node_events(s, node_id, policy.events_per_node)
        except Exception:
            node_store.note_written(nodes[i:])  # the next prune tries them again
            raise
    out.claim_audit = _in_batches(
        db, lambda s: _prune_claim_audit(s, cutoff, policy.claim_audit_rows)
    )
    out.audit_log = _prune_audit_log(db, policy, now, every_node)
    return out


def _prune_audit_log(db: Database, policy: Retention, now: dt.datetime, every_space: bool) -> int:
    cutoff = now - dt.timedelta(days=policy.audit_days)
    pruned = _in_batches(db, lambda s: _prune_older(s, AuditEntry, cutoff))
    if every_space:
        with db.session() as s:
            spaces = list(
                s.scalars(
                    select(AuditEntry.space_id)
                    .group_by(AuditEntry.space_id)
                    .having(func.count(AuditEntry.id) > policy.audit_rows_per_space)
                )
            )
        audit.take_written()
    else:
        spaces = audit.take_written()
    for i, space_id in enumerate(spaces):
        try:
            step = partial(_prune_space_audit, space_id=space_id, keep=policy.audit_rows_per_space)
            pruned += _in_batches(db, step)
        except Exception:
            audit.note_written(spaces[i:])  # the next prune tries them again
            raise
    return pruned


def _in_batches(db: Database, step: Callable[[Session], int]) -> int:
    """Run `step` (delete at most PRUNE_BATCH rows, return how many) in its own
    write transaction until it deletes less than a batch; the rows deleted."""
    total = 0
    while True:
        with db.session(write_lock=True) as s:
            n = step(s)
        total += n
        if n < PRUNE_BATCH:
            return total


def _prune_older(s: Session, model: type[NodeEvent] | type[AuditEntry], cutoff: dt.datetime) -> int:
    """Delete up to PRUNE_BATCH rows of `model` older than `cutoff`, oldest first.

    Ids grow with time, so the oldest rows have the lowest ids: reading the
    first PRUNE_BATCH by primary key finds them without an index on `at`."""
    rows = s.execute(select(model.id, model.at).order_by(model.id).limit(PRUNE_BATCH)).all()
    old = [rid for rid, at in rows if aware(at) < cutoff]
    if old:
        s.execute(delete(model).where(model.id.in_(old)))
    return len(old)


def _prune_space_audit(s: Session, space_id: str, keep: int) -> int:
    """Delete up to PRUNE_BATCH of the Space's entries beyond its newest `keep`."""
    newest_dropped = s.scalar(
        select(AuditEntry.id)
        .where(AuditEntry.space_id == space_id)
        .order_by(AuditEntry.id.desc())
        .offset(keep)
        .limit(1)
    )
    if newest_dropped is None:
        return 0
    ids = list(
        s.scalars(
            select(AuditEntry.id)
            .where(AuditEntry.space_id == space_id, AuditEntry.id <= newest_dropped)
            .order_by(AuditEntry.id)
            .limit(PRUNE_BATCH)
        )
    )
    if ids:
        s.execute(delete(AuditEntry).where(AuditEntry.id.in_(ids)))
    return len(ids)


def _prune_claim_audit(s: Session, cutoff: dt.datetime, keep: int) -> int:
    """Delete up to PRUNE_BATCH rows that are older than `cutoff` or beyond the
    newest `keep`, oldest first."""
    newest_dropped = s.scalar(
        select(ClaimAudit.id).order_by(ClaimAudit.id.desc()).offset(keep).limit(1)
    )
    old = select(ClaimAudit.id).where(ClaimAudit.at < cutoff)
    if newest_dropped is not None:
        old = select(ClaimAudit.id).where(
            (ClaimAudit.at < cutoff) | (ClaimAudit.id <= newest_dropped)
        )
    ids = list(s.scalars(old.order_by(ClaimAudit.id).limit(PRUNE_BATCH)))
    if ids:
        s.execute(delete(ClaimAudit).where(ClaimAudit.id.in_(ids)))
    return len(ids)
