"""Migration 0007 (key rotation, planned stops, clones) goes down and up
again on the real database (SQLite; PostgreSQL with TETHER_TEST_DATABASE_URL), and
the node API answer's lifecycle fields read what it stores."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import select

import tether.cloud.migrations as migrations
from tests.fixtures.database import migrated_database
from tether.cloud import planned_stops
from tether.cloud.db import Database
from tether.cloud.models import Node, User
from tether.cloud.store import nodes as node_store
from tether.cloud.store import spaces as space_store

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    with migrated_database(tmp_path) as database:
        yield database


def _node(db: Database) -> str:
    nid = str(uuid.uuid4())
    with db.session(write_lock=True) as s:
        user = User(email=f"{uuid.uuid4().hex}@b.c", name="a", password_hash="x")
        s.add(user)
        s.flush()
        space = space_store.create_space(s, "S", user)
        s.add(
            Node(
                id=nid,
                space_id=space.id,
                hostname="h",
                public_key_pem="k",
                public_key_sha256="f" * 64,
                state="offline",
                state_since=T0,
                claimed_at=T0,
                key_created_at=T0 + dt.timedelta(days=1),
                previous_key_sha256="e" * 64,
                planned_reason="upgrade",
                expected_back_at=T0 + dt.timedelta(minutes=10),
                clone_conflict=json.dumps({"current": {}, "newcomer": {}, "refused": 2}),
                clone_conflict_at=T0,
            )
        )
    return nid


def test_the_lifecycle_fields_are_stored_and_answered(db: Database) -> None:
    nid = _node(db)
    with db.session() as s:
        node = s.get(Node, nid)
        assert node is not None
        out = node_store.node_json(node)
        assert out["key_created_at"].startswith("2026-03-02T12:00:00")
        assert out["previous_key_sha256"] == "e" * 64
        assert out["planned"]["reason"] == "upgrade"
        assert out["planned"]["expected_back_at"].startswith("2026-03-01T12:10:00")
        assert out["clone_conflict"]["refused"] == 2
        text = planned_stops.text(node, now=T0)
        assert text == "planned: upgrade, expected back at 12:10 UTC"
        assert planned_stops.text(node, now=T0 + dt.timedelta(hours=1)).endswith("(overdue)")


def test_migration_0007_goes_down_and_up_again(db: Database) -> None:
    nid = _node(db)
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    with db.engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0006")
        conn.commit()
        command.upgrade(cfg, "head")
        conn.commit()
    with db.session() as s:
        node = s.scalar(select(Node).where(Node.id == nid))
        assert node is not None and node.hostname == "h"  # the node survived
        assert node.key_created_at is None and node.planned_reason is None
        assert node.clone_conflict is None and node.clone_takeover_machine_id is None
        assert node_store.node_json(node)["key_created_at"].startswith("2026-03-01T12:00:00")
