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
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from tether.cloud import audit
from tether.cloud.db import Database
from tether.cloud.models import AuditEntry, ClaimAudit, utcnow
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
    while True:
        with db.session(write_lock=True) as s:
            n = node_store.prune_old_events(s, cutoff)
        out.node_events += n
        if n < PRUNE_BATCH:
            break
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
    while True:
        with db.session(write_lock=True) as s:
            n = _prune_claim_audit(s, cutoff, policy.claim_audit_rows)
        out.claim_audit += n
        if n < PRUNE_BATCH:
            break
    out.audit_log = _prune_audit_log(db, policy, now, every_node)
    return out


def _prune_audit_log(db: Database, policy: Retention, now: dt.datetime, every_space: bool) -> int:
    cutoff = now - dt.timedelta(days=policy.audit_days)
    pruned = 0
    while True:  # by age: the lowest ids are the oldest
        with db.session(write_lock=True) as s:
            rows = s.execute(
                select(AuditEntry.id, AuditEntry.at).order_by(AuditEntry.id).limit(PRUNE_BATCH)
            ).all()
            old = [rid for rid, at in rows if aware(at) < cutoff]
            if old:
                s.execute(delete(AuditEntry).where(AuditEntry.id.in_(old)))
        pruned += len(old)
        if len(old) < PRUNE_BATCH:
            break
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
            while True:
                with db.session(write_lock=True) as s:
                    n = _prune_space_audit(s, space_id, policy.audit_rows_per_space)
                pruned += n
                if n < PRUNE_BATCH:
                    break
        except Exception:
            audit.note_written(spaces[i:])  # the next prune tries them again
            raise
    return pruned


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
