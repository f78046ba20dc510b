"""The one rate limiter, with an injected clock: no sleeps."""

from __future__ import annotations

from tests.fixtures.clock import FakeClock
from tether.cloud.limits import Budget, LogLimiter, TokenBucket, Window, address_key


def test_window_counts_attempts_when_they_start_and_frees_after_the_window() -> None:
    clock = FakeClock()
    w = Window(3, 60, clock)
    assert [w.hit("a") for _ in range(3)] == [0, 0, 0]
    assert w.hit("a") == 60  # the fourth is refused before it runs
    assert w.hit("b") == 0  # other keys are not affected
    clock.now += 30
    assert w.retry_after("a") == 30
    clock.now += 30
    assert w.hit("a") == 0


def test_window_add_counts_failures_and_forget_clears() -> None:
    clock = FakeClock()
    w = Window(2, 10, clock)
    w.add("k")
    w.add("k")
    assert w.retry_after("k") == 10
    w.forget("k")
    assert w.retry_after("k") == 0


def test_window_bounds_its_keys() -> None:
    clock = FakeClock()
    w = Window(1, 60, clock, max_keys=100)
    for i in range(1000):
        w.hit(str(i))
    assert len(w._events) <= 100


def test_token_bucket_refills_at_its_rate() -> None:
    clock = FakeClock()
    b = TokenBucket(rate=2, burst=4, clock=clock)
    assert all(b.take() for _ in range(4))
    assert not b.take()
    clock.now += 1
    assert b.take() and b.take() and not b.take()


def test_ipv6_is_limited_per_64_and_mapped_ipv4_as_ipv4() -> None:
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::2")
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:10.0.0.1") == "10.0.0.1"
    assert address_key("192.0.2.7") == "192.0.2.7"


def test_log_limiter_reports_what_it_suppressed() -> None:
    clock = FakeClock()
    log = LogLimiter(2, 10, clock)
    assert log.allow("n") == (True, 0)
    assert log.allow("n") == (True, 0)
    assert log.allow("n") == (False, 0)
    assert log.allow("n") == (False, 0)
    clock.now += 10
    assert log.allow("n") == (True, 2)


def test_window_undo_takes_back_one_event_only() -> None:
    clock = FakeClock()
    w = Window(3, 60, clock)
    assert [w.hit("a") for _ in range(3)] == [0, 0, 0]
    w.undo("a")  # one attempt did not count: one more may start
    assert w.count("a") == 2
    assert w.hit("a") == 0 and w.hit("a") == 60
    w.undo("none")  # nothing counted: nothing happens
    assert w.count("none") == 0


def test_budget_holds_at_most_its_total_until_given_back() -> None:
    b = Budget(10)
    assert b.take(6) and b.take(4)
    assert not b.take(1)  # full: nothing more is held
    assert b.held == 10
    b.give(4)
    assert not b.take(5) and b.take(4)
    b.give(10)
    assert b.held == 0 and b.take(10)
