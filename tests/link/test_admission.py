"""Admission (tether.cloud.link.admission) with an injected clock: the measured
connect rate sizes a restart's spread; too many handshakes in flight get a
Retry-After; a finished handshake leaves the count once."""

from __future__ import annotations

import pytest

from tests.fixtures.clock import FakeClock
from tether.cloud.link import admission
from tether.cloud.link.admission import Admission


def test_spread_follows_the_measured_rate() -> None:
    clock, cpu = FakeClock(), FakeClock()
    a = Admission(clock, cpu_clock=cpu)
    # Nothing measured: the assumed rate.
    assert a.restart_spread(10_000) == 10_000 / admission.DEFAULT_RATE
    for _ in range(500):  # 100 links a second for 5 s, a whole core busy with them
        a.note_linked()
        clock.now += 0.01
        cpu.now += 0.01
    assert a.rate() == 100.0
    assert a.restart_spread(2_000) == 20.0
    assert a.restart_spread(10) == admission.MIN_SPREAD
    assert a.restart_spread(10**6) == admission.MAX_SPREAD


def test_spread_follows_the_cpu_capacity_when_the_fleet_came_slower() -> None:
    """A fleet asked back over a long spread arrives slowly; the CPU it cost
    says the Cloud could take it faster, and the next spread is shorter."""
    clock, cpu = FakeClock(), FakeClock()
    a = Admission(clock, cpu_clock=cpu)
    for _ in range(500):  # 100 links a second, at 2.5 ms of CPU each (a quarter of a core)
        a.note_linked()
        clock.now += 0.01
        cpu.now += 0.0025
    capacity = admission.CAPACITY_SHARE * 499 / (499 * 0.0025)  # links per CPU second
    assert a.rate() == pytest.approx(capacity)  # 320 a second, not the 100 that arrived
    assert a.restart_spread(2_000) == pytest.approx(2_000 / capacity)
    # Links measured on almost no CPU ask no more than 4x what arrived.
    cpu_b = FakeClock()
    b = Admission(clock, cpu_clock=cpu_b)
    for _ in range(500):
        b.note_linked()
        clock.now += 0.01
        cpu_b.now += 0.00001
    assert b.rate() == pytest.approx(400.0)


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
