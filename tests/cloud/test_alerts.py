"""Reachability alerts and the outbox on the real database (SQLite, or
PostgreSQL with TETHER_TEST_DATABASE_URL), with the time passed in."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.fixtures.clock import FakeClock
from tests.fixtures.database import migrated_database
from tests.fixtures.receivers import WebhookReceiver, webhook
from tether.cloud.alerts import outbox, policy, reachability
from tether.cloud.db import Database
from tether.cloud.models import (
    Alert,
    AlertGrace,
    Node,
    NodeRoom,
    Notification,
    NotificationChannel,
    Room,
    Silence,
    User,
)
from tether.cloud.secrets import SecretBox
from tether.cloud.store import spaces as space_store
from tether.protocol import states
from tether.protocol.states import NodeState

GRACE = 60.0
__all__ = ["webhook"]  # the receiver fixture, used by name


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    reachability.defaults["grace_seconds"] = GRACE
    reachability.limits = outbox.Limits()
    with migrated_database(tmp_path) as database:
        yield database


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(time.time())


def at(clock: FakeClock) -> dt.datetime:
    return dt.datetime.fromtimestamp(clock(), dt.UTC)


class World:
    def __init__(self, db: Database) -> None:
        self.db = db
        with db.session(write_lock=True) as s:
            user = User(email=f"{uuid.uuid4().hex}@b.c", name="a", password_hash="x")
            s.add(user)
            s.flush()
            space = space_store.create_space(s, "S", user)
            self.space_id = space.id
            room = Room(space_id=space.id, name="db servers")
            s.add(room)
            s.flush()
            self.room_id = room.id
            self.node_id = self.add_node(s, "web1", [room.id])
            self.channel_id = self.add_channel(s)

    def add_node(self, s: object, host: str, rooms: list[str]) -> str:
        from sqlalchemy.orm import Session

        assert isinstance(s, Session)
        nid = str(uuid.uuid4())
        s.add(
            Node(
                id=nid,
                space_id=self.space_id,
                hostname=host,
                public_key_pem="k",
                public_key_sha256="f",
                state=NodeState.LIVE.value,
            )
        )
        s.flush()
        for r in rooms:
            s.add(NodeRoom(node_id=nid, room_id=r))
        return nid

    def add_channel(self, s: object, rooms: str = "[]", severities: str | None = None) -> str:
        from sqlalchemy.orm import Session

        assert isinstance(s, Session)
        ch = NotificationChannel(
            space_id=self.space_id,
            name="hook",
            kind="webhook",
            config='{"url": "http://127.0.0.1:9/"}',
            rooms=rooms,
            severities=severities or '["warning", "critical"]',
        )
        s.add(ch)
        s.flush()
        return ch.id

    def offline(
        self,
        clock: FakeClock,
        code: str = states.CAUSE_KEEPALIVE,
        back: float | None = None,
        node_id: str | None = None,
    ) -> None:
        with self.db.session(write_lock=True) as s:
            node = s.get(Node, node_id or self.node_id)
            assert node is not None
            node.state = NodeState.OFFLINE.value
            reachability.node_offline(s, node, "link lost", code, back, now=at(clock))

    def live(self, clock: FakeClock, node_id: str | None = None) -> None:
        with self.db.session(write_lock=True) as s:
            node = s.get(Node, node_id or self.node_id)
            assert node is not None
            node.state = NodeState.LIVE.value
            reachability.node_live(s, node, now=at(clock))

    def alerts(self) -> list[Alert]:
        with self.db.session() as s:
            return list(s.scalars(select(Alert).order_by(Alert.raised_at)))

    def outbox(self) -> list[tuple[str, str | None]]:
        with self.db.session() as s:
            return [
                (n.event, n.alert_id)
                for n in s.scalars(select(Notification).order_by(Notification.id))
            ]


def test_back_within_the_grace_raises_nothing(db: Database, clock: FakeClock) -> None:
    w = World(db)
    w.offline(clock)
    clock.now += GRACE - 1
    assert reachability.raise_due(db, at(clock), 0) == []
    w.live(clock)
    clock.now += GRACE * 10
    assert reachability.raise_due(db, at(clock), 0) == []
    assert w.alerts() == [] and w.outbox() == []


def test_one_alert_per_incident_then_resolved_with_its_duration(
    db: Database, clock: FakeClock
) -> None:
    w = World(db)
    w.offline(clock)
    clock.now += GRACE + 0.5
    raised = reachability.raise_due(db, at(clock), 0)
    assert len(raised) == 1
    clock.now += 30
    assert reachability.raise_due(db, at(clock), 0) == []  # still one incident
    (alert,) = w.alerts()
    assert (alert.status, alert.severity, alert.name) == ("active", "critical", "reachability")
    w.live(clock)
    (alert,) = w.alerts()
    assert alert.status == "resolved"
    assert alert.resolved_at is not None
    took = outbox.alert_json(alert, "S", at(clock))["duration_seconds"]
    assert took == pytest.approx(GRACE + 30.5, abs=0.01)
    assert w.outbox() == [("raised", alert.id), ("resolved", alert.id)]


def test_a_planned_stop_waits_for_its_expected_return_plus_the_grace(
    db: Database, clock: FakeClock
) -> None:
    w = World(db)
    w.offline(clock, states.CAUSE_GOODBYE, back=600)
    clock.now += 600 + GRACE - 1
    assert reachability.raise_due(db, at(clock), 0) == []
    clock.now += 2
    assert len(reachability.raise_due(db, at(clock), 0)) == 1
    (alert,) = w.alerts()
    assert alert.severity == "warning" and "planned stop" in alert.summary


def test_a_planned_stop_back_in_time_sends_nothing(db: Database, clock: FakeClock) -> None:
    w = World(db)
    w.offline(clock, states.CAUSE_GOODBYE, back=600)
    clock.now += 590
    reachability.raise_due(db, at(clock), 0)
    w.live(clock)
    clock.now += 3600
    assert reachability.raise_due(db, at(clock), 0) == []
    assert w.outbox() == []


def test_after_a_cloud_side_close_agents_get_a_grace_from_the_cloud_start(
    db: Database, clock: FakeClock
) -> None:
    w = World(db)
    w.offline(clock, states.CAUSE_CLOUD_CLOSED)
    clock.now += 3600  # the Cloud was down for an hour
    started = clock()
    assert reachability.raise_due(db, at(clock), started) == []
    clock.now += GRACE - 1
    assert reachability.raise_due(db, at(clock), started) == []
    w.live(clock)  # the agent reconnected to the new process
    clock.now += GRACE * 2
    assert reachability.raise_due(db, at(clock), started) == []
    assert w.alerts() == []
    # One that never comes back is down, a grace after the start.
    w.offline(clock, states.CAUSE_CLOUD_CLOSED)
    started = clock()
    clock.now += GRACE + 1
    assert len(reachability.raise_due(db, at(clock), started)) == 1


def test_removed_nodes_are_not_watched(db: Database, clock: FakeClock) -> None:
    w = World(db)
    w.offline(clock, states.CAUSE_REMOVED)
    clock.now += GRACE * 5
    assert reachability.raise_due(db, at(clock), 0) == []


def test_grace_node_over_room_over_space(db: Database, clock: FakeClock) -> None:
    w = World(db)
    with db.session(write_lock=True) as s:
        s.add(AlertGrace(space_id=w.space_id, scope="space", target="", grace_seconds=10))
        s.add(AlertGrace(space_id=w.space_id, scope="room", target=w.room_id, grace_seconds=100))
        other = w.add_node(s, "web2", [])
    # web1 is in the room (100 s); web2 only has the Space's 10 s.
    w.offline(clock)
    w.offline(clock, node_id=other)
    clock.now += 11
    assert len(reachability.raise_due(db, at(clock), 0)) == 1
    assert [a.hostname for a in w.alerts()] == ["web2"]
    clock.now += 90
    assert len(reachability.raise_due(db, at(clock), 0)) == 1
    with db.session(write_lock=True) as s:
        s.add(AlertGrace(space_id=w.space_id, scope="node", target=w.node_id, grace_seconds=5))
    w.live(clock)
    w.offline(clock)
    clock.now += 6
    assert len(reachability.raise_due(db, at(clock), 0)) == 1


def test_silenced_and_unrouted_alerts_are_shown_but_not_sent(
    db: Database, clock: FakeClock
) -> None:
    w = World(db)
    with db.session(write_lock=True) as s:
        s.add(
            Silence(
                space_id=w.space_id,
                scope="room",
                target=w.room_id,
                ends_at=at(clock) + dt.timedelta(hours=1),
            )
        )
    w.offline(clock)
    clock.now += GRACE + 1
    assert len(reachability.raise_due(db, at(clock), 0)) == 1
    w.live(clock)
    assert len(w.alerts()) == 1 and w.outbox() == []
    # After the silence ends, a channel for another room still gets nothing,
    # and one for warnings only gets nothing of a critical alert.
    clock.now += 3600
    with db.session(write_lock=True) as s:
        s.get(NotificationChannel, w.channel_id).enabled = False  # type: ignore[union-attr]
        w.add_channel(s, rooms=f'["{uuid.uuid4()}"]')
        w.add_channel(s, severities='["warning"]')
        wanted = w.add_channel(s, rooms=f'["{w.room_id}"]', severities='["critical"]')
    w.offline(clock)
    clock.now += GRACE + 1
    reachability.raise_due(db, at(clock), 0)
    with db.session() as s:
        assert [n.channel_id for n in s.scalars(select(Notification))] == [wanted]


def test_a_flapping_node_is_held_back_into_one_summary(db: Database, clock: FakeClock) -> None:
    w = World(db)
    limits = outbox.Limits(flap_limit=2, flap_window_seconds=600)
    reachability.limits = limits
    for _ in range(4):
        w.offline(clock)
        clock.now += GRACE + 1
        reachability.raise_due(db, at(clock), 0)
        clock.now += 5
        w.live(clock)
        clock.now += 5
    assert len(w.alerts()) == 4  # every incident is shown
    events = [e for e, _ in w.outbox()]
    assert events == ["raised", "resolved"]  # the rest held back
    assert outbox.flush_summaries(db, at(clock), limits) == 0  # window not over yet
    clock.now += 600
    assert outbox.flush_summaries(db, at(clock), limits) == 1
    assert outbox.flush_summaries(db, at(clock), limits) == 0
    with db.session() as s:
        summary = s.scalars(select(Notification).where(Notification.event == "summary")).one()
        assert '"held": 3' in summary.payload


def _pending(db: Database, w: World, clock: FakeClock, n: int = 1) -> None:
    for _ in range(n):
        w.offline(clock)
        clock.now += GRACE + 1
        reachability.raise_due(db, at(clock), 0)
        w.live(clock)


def test_claims_are_exclusive_retried_with_backoff_then_failed(
    db: Database, clock: FakeClock, tmp_path: Path
) -> None:
    w = World(db)
    box = SecretBox(tmp_path / "secret.key")
    limits = outbox.Limits(retry_base_seconds=2, retry_max_seconds=8, max_attempts=3, flap_limit=99)
    reachability.limits = limits
    _pending(db, w, clock, 10)  # 20 notifications
    got: dict[str, list[int]] = {}

    def run(pid: str) -> None:
        got[pid] = [c.id for c in outbox.claim(db, pid, at(clock), limits, box, n=7)]

    threads = [threading.Thread(target=run, args=(f"p{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [i for v in got.values() for i in v]
    assert len(ids) == len(set(ids)) == 20  # each once, none twice
    assert outbox.claim(db, "p3", at(clock), limits, box) == []  # all taken
    # One notification fails: retried after 2 s, 4 s, then failed.
    with db.session(write_lock=True) as s:
        for n in s.scalars(select(Notification)):
            n.state, n.claimed_by = "pending", None
            n.attempts = 0
    item = outbox.claim(db, "p0", at(clock), limits, box, n=1)[0]
    key = item.key
    assert outbox.finish(db, "p0", item, "HTTP 500", at(clock), limits) == "pending"
    clock.now += 1.9
    assert item.id not in [c.id for c in outbox.claim(db, "p1", at(clock), limits, box, n=50)]
    clock.now += 0.2
    again = [c for c in outbox.claim(db, "p1", at(clock), limits, box, n=50) if c.id == item.id]
    assert again and again[0].key == key and again[0].attempts == 2
    assert outbox.finish(db, "p1", again[0], "HTTP 500", at(clock), limits) == "pending"
    clock.now += 4.1
    third = [c for c in outbox.claim(db, "p1", at(clock), limits, box, n=50) if c.id == item.id]
    assert outbox.finish(db, "p1", third[0], "HTTP 500", at(clock), limits) == "failed"
    with db.session() as s:
        row = s.get(Notification, item.id)
        assert row is not None and row.state == "failed" and row.last_error == "HTTP 500"


def test_a_dead_claim_is_sent_again_with_the_same_key(
    db: Database, clock: FakeClock, tmp_path: Path
) -> None:
    w = World(db)
    box = SecretBox(tmp_path / "secret.key")
    limits = outbox.Limits(lease_seconds=25)
    _pending(db, w, clock)
    (raised, _resolved) = outbox.claim(db, "dead", at(clock), limits, box)
    clock.now += 24
    assert outbox.claim(db, "alive", at(clock), limits, box) == []  # lease still running
    clock.now += 2
    retaken = {c.key for c in outbox.claim(db, "alive", at(clock), limits, box)}
    assert raised.key in retaken
    # The dead process's late answer cannot overwrite the new claim.
    assert outbox.finish(db, "dead", raised, None, at(clock), limits) == "lost-claim"
    # A single-process restart releases claims at once.
    assert outbox.release_all(db) == 2
    assert len(outbox.claim(db, "new", at(clock), limits, box)) == 2


def test_policy_backoff_and_grace_bounds() -> None:
    assert [policy.backoff(n, 1, 5) for n in (1, 2, 3, 4)] == [1, 2, 4, 5]
    with pytest.raises(ValueError, match="between 0"):
        policy.check_grace(-1)
    with pytest.raises(ValueError, match="number"):
        policy.check_grace(True)


def test_a_node_named_like_a_slack_mention_pings_nobody(webhook: WebhookReceiver) -> None:
    import asyncio
    import json

    import httpx

    from tether.cloud.alerts import channels

    item = outbox.Claimed(
        id=1,
        key="tn_x",
        event="raised",
        body={"node": {"hostname": "<!channel> & <@U123>"}, "space": {"name": "S"}, "summary": ""},
        attempts=1,
        channel_kind="slack",
        channel_config={"host": "127.0.0.1"},
        secret=webhook.url,  # a Slack channel's secret is its URL
    )

    async def send() -> str | None:
        async with httpx.AsyncClient(trust_env=False) as http:
            return await channels.send(item, http, 5)

    assert asyncio.run(send()) is None
    (d,) = webhook.accepted()
    text = json.loads(d.body)["text"]
    assert "<!channel>" not in text and "<@U123>" not in text
    assert "&lt;!channel&gt; &amp; &lt;@U123&gt;" in text
    assert d.key == "tn_x"


def test_a_label_silence_follows_the_label_that_wins(db: Database, clock: FakeClock) -> None:
    from tether.cloud.models import NodeLabel

    w = World(db)
    with db.session(write_lock=True) as s:
        # The agent says env=prod, the Cloud overrides it: env=staging (rank 3 > 2).
        s.add(NodeLabel(node_id=w.node_id, key="env", source="agent", rank=2, value="prod"))
        s.add(NodeLabel(node_id=w.node_id, key="env", source="cloud", rank=3, value="staging"))
        s.add(
            Silence(
                space_id=w.space_id,
                scope="label",
                target="env=prod",
                ends_at=at(clock) + dt.timedelta(hours=1),
            )
        )
    w.offline(clock)
    clock.now += GRACE + 1
    reachability.raise_due(db, at(clock), 0)
    assert [e for e, _ in w.outbox()] == ["raised"]  # env=prod is not its label
    w.live(clock)
    with db.session(write_lock=True) as s:
        s.add(
            Silence(
                space_id=w.space_id,
                scope="label",
                target="env=staging",
                ends_at=at(clock) + dt.timedelta(hours=1),
            )
        )
    clock.now += 10
    w.offline(clock)
    clock.now += GRACE + 1
    reachability.raise_due(db, at(clock), 0)
    assert [e for e, _ in w.outbox()] == ["raised", "resolved"]  # the second one silenced
    assert len(w.alerts()) == 2
