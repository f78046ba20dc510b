"""Presence: live on connect, offline on close, stale closes ignored, causes kept."""

from __future__ import annotations

from tether.protocol.states import (
    CAUSE_CLOSED,
    CAUSE_CONNECTED,
    CAUSE_GOODBYE,
    CAUSE_KEEPALIVE,
    CAUSE_REPLACED,
    NodeState,
    Presence,
)


def test_unseen_live_offline_live() -> None:
    p = Presence()
    assert p.state is NodeState.UNSEEN
    c = p.on_connect("s1", at=10.0)
    assert (c.old, c.new, c.cause, c.at) == (NodeState.UNSEEN, NodeState.LIVE, CAUSE_CONNECTED, 10)
    c2 = p.on_disconnect("s1", CAUSE_KEEPALIVE, at=40.0)
    assert c2 is not None
    assert (c2.old, c2.new, c2.cause) == (NodeState.LIVE, NodeState.OFFLINE, CAUSE_KEEPALIVE)
    assert p.since == 40.0
    c3 = p.on_connect("s2", at=50.0)
    assert (c3.old, c3.new, c3.cause) == (NodeState.OFFLINE, NodeState.LIVE, CAUSE_CONNECTED)


def test_late_close_of_old_session_does_not_take_new_one_offline() -> None:
    p = Presence()
    p.on_connect("old", at=1.0)
    change = p.on_connect("new", at=2.0)
    assert change.cause == CAUSE_REPLACED and change.previous_session_id == "old"
    assert p.on_disconnect("old", CAUSE_CLOSED, at=3.0) is None
    assert p.state is NodeState.LIVE and p.session_id == "new"
    assert p.on_disconnect("new", CAUSE_CLOSED, at=4.0) is not None
    assert p.state is NodeState.OFFLINE


def test_double_close_reports_once() -> None:
    p = Presence()
    p.on_connect("s", at=1.0)
    assert p.on_disconnect("s", CAUSE_CLOSED, at=2.0) is not None
    assert p.on_disconnect("s", CAUSE_KEEPALIVE, at=3.0) is None


def test_goodbye_keeps_reason_and_expected_return() -> None:
    p = Presence()
    p.on_connect("s", at=1.0)
    change = p.on_disconnect("s", CAUSE_GOODBYE, at=2.0, detail="upgrade", expected_back_seconds=90)
    assert change is not None
    assert change.detail == "upgrade" and change.expected_back_seconds == 90
    assert str(change.new) == "offline"


def test_reconnect_with_same_session_is_not_a_replacement() -> None:
    p = Presence(NodeState.OFFLINE, "s", 0.0)
    assert p.on_connect("s", at=1.0).cause == CAUSE_CONNECTED
