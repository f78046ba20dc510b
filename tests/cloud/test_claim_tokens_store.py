"""Claiming tokens in the database itself (SQLite, or PostgreSQL with
TETHER_TEST_DATABASE_URL): expiry decided by an injected clock, and the
0005 migration turning a Space's one token into its default named token."""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from tests.fixtures.api import claim_body
from tests.fixtures.clock import FakeClock
from tests.fixtures.cloud import PG_ENV, _create_pg_database
from tests.fixtures.database import migrated_database
from tether.cloud.claim import ClaimError, apply_claim, parse_claim
from tether.cloud.db import MIGRATIONS, Database
from tether.cloud.models import Node, User
from tether.cloud.secrets import SecretBox, new_token, sha256_hex
from tether.cloud.store import claim_tokens
from tether.cloud.store import spaces as space_store

EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
def db_url(tmp_path: Path) -> Iterator[str]:
    """An empty database, for the migration test to upgrade step by step."""
    pg = os.environ.get(PG_ENV)
    if not pg:
        yield f"sqlite:///{tmp_path / 'cloud.db'}"
        return
    url, drop = _create_pg_database(pg)
    yield url
    drop()


def at(clock: FakeClock) -> dt.datetime:
    return EPOCH + dt.timedelta(seconds=clock())


def request(token: str) -> tuple[str, object]:
    node_id = str(uuid.uuid4())
    return node_id, parse_claim(node_id, json.dumps(claim_body(node_id, token)).encode())


def test_expiry_is_decided_by_the_clock_given_to_the_claim(tmp_path: Path) -> None:
    with migrated_database(tmp_path) as db:
        clock = FakeClock(0)
        with db.session(write_lock=True) as s:
            owner = User(email="a@example.org", name="a", password_hash="x")
            s.add(owner)
            s.flush()
            space = space_store.create_space(s, "S", owner)
            token, _ = claim_tokens.create(
                s, space.id, "one hour", owner.id, expires_at=at(clock) + dt.timedelta(hours=1)
            )
        clock.now += 3599
        _, req = request(token)
        assert apply_claim(db, req, "192.0.2.1", now=at(clock)) == ("claimed", space.id)  # type: ignore[arg-type]
        clock.now += 1
        _, req = request(token)
        with pytest.raises(ClaimError) as refused:
            apply_claim(db, req, "192.0.2.1", now=at(clock))  # type: ignore[arg-type]
        assert refused.value.key == "ErrForbidden"
        assert "'one hour'" in refused.value.message and "expired at 2026-01-01T01:00:00" in (
            refused.value.message
        )
        with db.session() as s:
            assert len(s.scalars(sa.select(Node)).all()) == 1


def test_migration_makes_the_one_token_the_default_named_token(db_url: str, tmp_path: Path) -> None:
    db = Database(db_url)
    box = SecretBox(tmp_path / "secret.key")
    token, prefix = new_token("tct")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0004")
        conn.commit()
        now = dt.datetime.now(dt.UTC)
        conn.execute(
            sa.text("INSERT INTO spaces (id, name, created_at) VALUES ('s1', 'Old', :now)"),
            {"now": now},
        )
        conn.execute(
            sa.text(
                "INSERT INTO rooms (id, space_id, name, is_all_nodes, created_at) "
                "VALUES ('r1', 's1', 'All nodes', true, :now)"
            ),
            {"now": now},
        )
        conn.execute(
            sa.text(
                "INSERT INTO claim_tokens (id, space_id, prefix, token_hash, token_encrypted, "
                "created_at) VALUES ('t1', 's1', :prefix, :hash, :sealed, :now)"
            ),
            {"prefix": prefix, "hash": sha256_hex(token), "sealed": box.seal(token), "now": now},
        )
        conn.commit()
        command.upgrade(cfg, "head")
        conn.commit()
    with db.session(write_lock=True) as s:
        [row] = claim_tokens.of_space(s, "s1")
        assert (row.name, row.is_default, row.uses, row.max_uses) == ("default", True, 0, None)
        assert claim_tokens.ensure(s, box, "s1", None)[0] == token  # Connect Nodes shows it
    _, req = request(token)
    assert apply_claim(db, req, "192.0.2.7") == ("claimed", "s1")  # type: ignore[arg-type]
    with db.session() as s:
        assert claim_tokens.of_space(s, "s1")[0].uses == 1
    db.dispose()
