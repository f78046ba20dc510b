"""Reconnect delays: bounds, growth, the cap, the Cloud's floor, reset."""

from __future__ import annotations

import random

import pytest

from tether.protocol.backoff import Backoff


def test_delays_grow_within_jitter_bounds_and_cap() -> None:
    b = Backoff(1, 60, random.Random(7))
    for attempt in range(20):
        ceiling = min(60, 2**attempt)
        d = b.next_delay()
        assert ceiling / 2 <= d <= ceiling, (attempt, d)
    assert b.attempts == 20


def test_never_zero_even_on_first_retry() -> None:
    for seed in range(200):
        assert Backoff(1, 300, random.Random(seed)).next_delay() >= 0.5


def test_jitter_spreads_a_crowd() -> None:
    delays = {round(Backoff(1, 300, random.Random(s)).next_delay(), 3) for s in range(100)}
    assert len(delays) > 50


def test_server_hint_is_a_floor() -> None:
    b = Backoff(1, 300, random.Random(3))
    for _ in range(5):
        d = b.next_delay(server_hint=30)
        assert 30 <= d <= 33
    # A hint smaller than the backoff does not shorten it.
    b = Backoff(1, 300, random.Random(3))
    for _ in range(8):
        b.next_delay()
    assert b.next_delay(server_hint=0.1) >= 128


def test_reset_starts_over() -> None:
    b = Backoff(2, 300, random.Random(1))
    for _ in range(6):
        b.next_delay()
    b.reset()
    assert 1 <= b.next_delay() <= 2


@pytest.mark.parametrize(("base", "cap"), [(0, 10), (-1, 10), (5, 1)])
def test_bad_settings_refused(base: float, cap: float) -> None:
    with pytest.raises(ValueError):
        Backoff(base, cap)
