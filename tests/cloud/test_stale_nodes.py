"""Stale and ephemeral nodes (tether.cloud.stale_nodes) and the audit log's
retention (tether.cloud.retention) on the real database, deciding by the
time they are given: no waiting days."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from sqlalchemy import func, select

from tests.fixtures.database import migrated_database
from tether.cloud import audit, retention, stale_nodes
from tether.cloud.db import Database
from tether.cloud.models import AuditEntry, Node, Space, User
from tether.cloud.store import spaces as space_store
from tether.node import host_labels
from tether.protocol import frames
from tether.protocol import labels as label_rules

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
# Audit rows are written at the real time; older ones get explicit times before it.
NOW = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    with migrated_database(tmp_path) as database:
        audit.take_written()
        yield database


def _space(db: Database) -> str:
    with db.session(write_lock=True) as s:
        user = User(email=f"{uuid.uuid4().hex}@b.c", name="a", password_hash="x")
        s.add(user)
        s.flush()
        return space_store.create_space(s, "S", user).id


def _node(
    db: Database, space_id: str, state: str, since: dt.datetime, ttl: int | None = None
) -> str:
    nid = str(uuid.uuid4())
    with db.session(write_lock=True) as s:
        s.add(
            Node(
                id=nid,
                space_id=space_id,
                hostname="h",
                public_key_pem="k",
                public_key_sha256="f",
                state=state,
                state_since=since,
                ephemeral_ttl_seconds=ttl,
            )
        )
    return nid


def _there(db: Database, nid: str) -> bool:
    with db.session() as s:
        return s.get(Node, nid) is not None


def _actions(db: Database, space_id: str) -> list[tuple[str, str, str | None]]:
    with db.session() as s:
        rows, _ = audit.page(s, space_id, audit.AuditQuery(limit=500))
        return [(e.actor, e.action, e.target) for e in reversed(rows)]


def test_ephemeral_nodes_go_after_their_ttl_not_live(db: Database) -> None:
    sp = _space(db)
    offline = _node(db, sp, "offline", T0, ttl=600)
    unseen = _node(db, sp, "unseen", T0, ttl=600)  # claimed, never linked
    live = _node(db, sp, "live", T0 - dt.timedelta(days=9), ttl=600)
    plain = _node(db, sp, "offline", T0 - dt.timedelta(days=9))
    # Never linked: at least UNSEEN_GRACE (600 s) to start its agent, whatever its TTL.
    installing = _node(db, sp, "unseen", T0, ttl=60)
    gone = _node(db, sp, "offline", T0, ttl=60)
    assert stale_nodes.reap(db, T0 + dt.timedelta(seconds=60)).ephemeral == [gone]

    early = stale_nodes.reap(db, T0 + dt.timedelta(seconds=599))
    assert early.removed == []
    assert all(_there(db, n) for n in (offline, unseen, live, plain))

    due = stale_nodes.reap(db, T0 + dt.timedelta(seconds=600))
    assert sorted(due.ephemeral) == sorted([offline, unseen, installing])
    assert [_there(db, n) for n in (offline, unseen, live, plain)] == [False, False, True, True]
    assert sorted(_actions(db, sp)) == sorted(
        ("policy:ephemeral", "node.removed", n) for n in (offline, unseen, installing, gone)
    )
    assert stale_nodes.reap(db, T0 + dt.timedelta(days=1)).removed == []


def test_stale_policy_marks_then_unmarks_and_removes(db: Database) -> None:
    sp = _space(db)
    old = _node(db, sp, "offline", T0 - dt.timedelta(days=31))
    recent = _node(db, sp, "offline", T0 - dt.timedelta(days=29))
    live = _node(db, sp, "live", T0 - dt.timedelta(days=90))
    assert stale_nodes.reap(db, T0).stale_marked == 0  # no policy: nothing happens

    with db.session(write_lock=True) as s:
        space = s.get(Space, sp)
        assert space is not None
        stale_nodes.set_policy(s, space, 30, "mark", "admin@x")
    assert stale_nodes.reap(db, T0).stale_marked == 1
    assert stale_nodes.reap(db, T0).stale_marked == 0  # marked once
    with db.session(write_lock=True) as s:
        got = {n.id: n.stale_marked_at for n in s.scalars(select(Node))}
        assert got[old] is not None and got[recent] is None and got[live] is None
        # It comes back: the next reap clears the mark.
        node = s.get(Node, old)
        assert node is not None
        node.state = "live"
    assert stale_nodes.reap(db, T0).unmarked == 1

    with db.session(write_lock=True) as s:
        node = s.get(Node, old)
        assert node is not None
        node.state = "offline"
        space = s.get(Space, sp)
        assert space is not None
        stale_nodes.set_policy(s, space, 30, "remove", "admin@x")
    out = stale_nodes.reap(db, T0)
    assert out.stale_removed == [old]
    assert [_there(db, n) for n in (old, recent, live)] == [False, True, True]
    assert stale_nodes.reap(db, T0 + dt.timedelta(days=2)).stale_removed == [recent]
    assert [a for a in _actions(db, sp) if a[0] == "policy:stale"] == [
        ("policy:stale", "node.marked_stale", old),
        ("policy:stale", "node.removed", old),
        ("policy:stale", "node.removed", recent),
    ]


def test_policy_and_ttl_checks_say_the_range() -> None:
    for days, action in ((0, "mark"), (3651, "mark"), (True, "mark"), (5, "delete"), ("5", "mark")):
        with pytest.raises(ValueError, match=r"after_days|action"):
            stale_nodes.check_policy(days, action)
    assert stale_nodes.check_policy(None, "whatever") == (None, None)
    for ttl in (59, 0, True, "60", 10**9):
        with pytest.raises(ValueError, match="ephemeral_ttl"):
            stale_nodes.check_ttl(ttl)
    assert stale_nodes.check_ttl(1, minimum=1) == 1


def test_audit_retention_prunes_by_age_and_per_space_count(db: Database) -> None:
    busy, quiet = _space(db), _space(db)
    with db.session(write_lock=True) as s:
        for i in range(30):
            audit.record(s, busy, "a@x", "token.used", f"t{i}")
        for i in range(5):
            audit.record(s, quiet, "a@x", "token.used", f"q{i}")
        s.flush()
        # Explicit times instead of waiting: the busy Space's first 5 are old.
        for e in s.scalars(select(AuditEntry).where(AuditEntry.space_id == busy)):
            if e.target in {f"t{i}" for i in range(5)}:
                e.at = NOW - dt.timedelta(days=400)
            else:
                e.at = NOW - dt.timedelta(days=1)
    policy = retention.Retention(audit_days=365, audit_rows_per_space=20)

    pruned = retention.prune(db, policy, now=NOW)

    assert pruned.audit_log == 10  # 5 by age, then 5 over the count
    with db.session() as s:
        left = {
            sid: int(n)
            for sid, n in s.execute(
                select(AuditEntry.space_id, func.count()).group_by(AuditEntry.space_id)
            )
        }
        targets = set(s.scalars(select(AuditEntry.target).where(AuditEntry.space_id == busy)))
    assert left == {busy: 20, quiet: 5}  # the quiet Space keeps all of its own
    assert targets == {f"t{i}" for i in range(10, 30)}  # the newest kept
    assert retention.prune(db, policy, now=NOW).audit_log == 0
    # After a restart nothing is noted: the first prune checks every Space.
    with db.session(write_lock=True) as s:
        for i in range(3):
            audit.record(s, quiet, "a@x", "token.used", f"r{i}")
    audit.take_written()
    small = retention.Retention(audit_days=365, audit_rows_per_space=4)
    assert retention.prune(db, small, now=NOW).audit_log == 0
    assert retention.prune(db, small, now=NOW, every_node=True).audit_log == 16 + 4


# --- agent labels: the rule, the config and the wire -----------------------------------


def test_host_labels_are_read_with_their_case_and_bad_lines_named(tmp_path: Path) -> None:
    conf = tmp_path / "tether.conf"
    conf.write_text(
        "[host labels]\n  Env = prod  # a comment\n  bad key = x\n  team = a\u202eb\n"
        "  k8s.io/zone = eu-1\n"
    )
    labels, problems = host_labels.read(conf)
    assert labels == {"Env": "prod", "k8s.io/zone": "eu-1"}
    assert len(problems) == 2 and "bad key" in problems[0] and "U+202E" in problems[1]
    assert host_labels.read(tmp_path / "missing.conf") == ({}, [])
    many = "[host labels]\n" + "".join(f"k{i} = v\n" for i in range(150))
    conf.write_text(many)
    labels, problems = host_labels.read(conf)
    assert len(labels) == label_rules.MAX_LABELS and "more than" in problems[0]


def test_hello_labels_cross_versions_both_ways() -> None:
    class OldHello(msgspec.Struct, tag="hello", tag_field="t", kw_only=True):
        v: int = 1
        agent_version: str
        hostname: str
        os: str
        machine_guid: str

    new = frames.Hello(
        agent_version="2", hostname="h", os="l", machine_guid="g", labels={"env": "prod"}
    )
    old = msgspec.msgpack.decode(frames.encode(new), type=OldHello)  # an older Cloud
    assert old.hostname == "h"
    older_agent = msgspec.msgpack.encode(
        OldHello(agent_version="1", hostname="h", os="l", machine_guid="g")
    )
    got = frames.decode(older_agent)
    assert isinstance(got, frames.Hello) and got.labels is None  # agent labels left alone
    upd = frames.decode(frames.encode(frames.NodeUpdate(labels={})))
    assert isinstance(upd, frames.NodeUpdate) and upd.labels == {}


def test_the_cloud_drops_labels_that_break_the_rule() -> None:
    raw: dict[str, object] = {"a_ok": " v ", "bad key": "x", "ctl": "a\x1bb", "n": 5}
    raw.update({f"k{i:03}": "v" for i in range(200)})
    clean = label_rules.clean(raw)
    assert clean["a_ok"] == "v" and "bad key" not in clean and "ctl" not in clean
    assert "n" not in clean and len(clean) == label_rules.MAX_LABELS


def test_migration_0008_goes_down_and_up_again(db: Database) -> None:
    from alembic import command
    from alembic.config import Config

    import tether.cloud.migrations as migrations

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    sp = _space(db)
    _node(db, sp, "offline", T0, ttl=60)
    with db.engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0007")
        conn.commit()
        command.upgrade(cfg, "head")
        conn.commit()
    with db.session() as s:
        node = s.scalar(select(Node))
        assert node is not None and node.ephemeral_ttl_seconds is None  # the column came back empty
        assert s.scalar(select(func.count()).select_from(AuditEntry)) == 0
