"""Bounded history (tether.cloud.retention) on the real database, with explicit times."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.fixtures.database import add_nodes, migrated_database
from tether.cloud import retention
from tether.cloud.db import Database
from tether.cloud.models import ClaimAudit, Node, NodeEvent
from tether.cloud.store import nodes as node_store

# Rows are written at the real time; older ones get explicit times before it.
NOW = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    with migrated_database(tmp_path) as database:
        node_store.take_written()  # start with no nodes noted by other tests
        yield database


def _events(db: Database, node_id: str, count: int, at: dt.datetime) -> None:
    with db.session(write_lock=True) as s:
        node = s.get(Node, node_id)
        assert node is not None
        for i in range(count):
            node_store.record_event(s, node, "alert", cause=f"a{i}")
        s.flush()
        # Explicit times instead of waiting days: the rows just written.
        for ev in s.scalars(
            select(NodeEvent).where(NodeEvent.node_id == node_id, NodeEvent.at > at)
        ):
            ev.at = at


def _count(db: Database, model: type, node_id: str | None = None) -> int:
    with db.session() as s:
        q = select(func.count()).select_from(model)
        if node_id is not None:
            q = q.where(NodeEvent.node_id == node_id)
        return int(s.scalar(q) or 0)


def test_node_events_keep_the_newest_per_node_and_none_past_the_age(db: Database) -> None:
    busy, quiet, old = add_nodes(db, 3)
    policy = retention.Retention(max_age_days=30, events_per_node=100, claim_audit_rows=10)
    _events(db, old, 50, NOW - dt.timedelta(days=31))  # past the age
    _events(db, quiet, 40, NOW - dt.timedelta(days=29))  # within both bounds
    _events(db, busy, 250, NOW - dt.timedelta(days=1))  # an alert flood
    with db.session(write_lock=True) as s:  # the newest of the busy node
        node = s.get(Node, busy)
        assert node is not None
        node_store.record_event(s, node, "state", cause="newest")

    pruned = retention.prune(db, policy, now=NOW)

    assert pruned.node_events == 50 + 151
    assert _count(db, NodeEvent, old) == 0
    assert _count(db, NodeEvent, quiet) == 40
    assert _count(db, NodeEvent, busy) == 100
    with db.session() as s:
        assert node_store.events(s, busy, limit=1)[0].cause == "newest"
    assert retention.prune(db, policy, now=NOW).node_events == 0  # nothing left to do


def test_after_a_restart_the_first_prune_checks_every_node(db: Database) -> None:
    (nid,) = add_nodes(db, 1)
    _events(db, nid, 30, NOW - dt.timedelta(hours=1))
    node_store.take_written()  # a restarted process has noted nothing
    policy = retention.Retention(events_per_node=10)
    assert retention.prune(db, policy, now=NOW).node_events == 0
    assert retention.prune(db, policy, now=NOW, every_node=True).node_events == 20
    assert _count(db, NodeEvent, nid) == 10


def test_age_pruning_goes_in_batches(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    (nid,) = add_nodes(db, 1)
    monkeypatch.setattr(node_store, "PRUNE_BATCH", 7)
    monkeypatch.setattr(retention, "PRUNE_BATCH", 7)
    _events(db, nid, 30, NOW - dt.timedelta(days=40))
    policy = retention.Retention(max_age_days=30, events_per_node=1000)
    assert retention.prune(db, policy, now=NOW).node_events == 30
    assert _count(db, NodeEvent) == 0


def test_claim_audit_keeps_the_newest_rows_and_none_past_the_age(db: Database) -> None:
    with db.session(write_lock=True) as s:
        for i in range(30):
            at = NOW - dt.timedelta(days=60 if i < 5 else 1)
            s.add(ClaimAudit(node_id=f"n{i}", address="192.0.2.1", result="ErrForbidden", at=at))
    policy = retention.Retention(max_age_days=30, claim_audit_rows=20)
    pruned = retention.prune(db, policy, now=NOW)
    assert pruned.claim_audit == 10
    with db.session() as s:
        left = sorted(int(n[1:]) for n in s.scalars(select(ClaimAudit.node_id)) if n)
    assert left == list(range(10, 30))
