"""Admission (tether.cloud.link.admission) with an injected clock: the measured
connect rate sizes a restart's spread; too many handshakes in flight get a
Retry-After; a finished handshake leaves the count once."""

from __future__ import annotations

from tests.fixtures.clock import FakeClock
from tether.cloud.link import admission
from tether.cloud.link.admission import Admission


def test_spread_follows_the_measured_rate() -> None:
    clock = FakeClock()
    a = Admission(clock)
    # Nothing measured: the assumed rate.
    assert a.restart_spread(10_000) == 10_000 / admission.DEFAULT_RATE
    for _ in range(500):  # 100 links a second for 5 s
        a.note_linked()
        clock.now += 0.01
    assert a.rate() == 100.0
    assert a.restart_spread(2_000) == 20.0
    assert a.restart_spread(10) == admission.MIN_SPREAD
    assert a.restart_spread(10**6) == admission.MAX_SPREAD


def test_saturated_upgrades_get_retry_after_and_pending_ends_once() -> None:
    a = Admission(FakeClock(), max_pending=2)
    first, second = a.begin(), a.begin()
    wait = a.refusal()
    assert wait is not None and wait >= 1 and a.refused == 1
    first.done()
    first.done()  # idempotent: the handshake left the count once
    assert a.pending == 1 and a.refusal() is None
    second.done()
    assert a.pending == 0
