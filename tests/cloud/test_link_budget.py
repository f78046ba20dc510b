"""The per-node frame budgets of the link, in-process with a fake clock: no sleeps."""

from __future__ import annotations

from tests.fixtures.clock import FakeClock
from tether.cloud.link_budget import (
    BUDGETS,
    MAX_DROPS,
    RECONNECT_AFTER,
    LinkBudget,
    Rate,
    Verdict,
)
from tether.protocol.link import CLOSE_OVER_BUDGET, OVER_BUDGET_RECONNECT_SECONDS, describe_close


def test_a_burst_passes_then_frames_are_dropped_and_counted_then_the_link_closes() -> None:
    clock = FakeClock()
    budget = LinkBudget(clock)
    burst = int(BUDGETS["error"].burst)
    assert [budget.admit("error", 50) for _ in range(burst)] == [Verdict.OK] * burst
    drops = [budget.admit("error", 50) for _ in range(MAX_DROPS)]
    assert drops == [Verdict.DROP] * MAX_DROPS
    assert budget.dropped["error"] == MAX_DROPS
    assert budget.admit("error", 50) is Verdict.CLOSE  # more than MAX_DROPS in the window
    assert budget.punish() == RECONNECT_AFTER == OVER_BUDGET_RECONNECT_SECONDS
    assert budget.retry_after() == 60
    clock.now += 59.5
    assert budget.retry_after() == 1
    clock.now += 0.5
    assert budget.retry_after() == 0
    assert budget.take_dropped()["error"] == MAX_DROPS + 1
    assert not budget.dropped


def test_kinds_have_separate_budgets_and_the_rate_refills() -> None:
    clock = FakeClock()
    budget = LinkBudget(clock, budgets={"alert": Rate(5, 10), "error": Rate(1, 2)})
    for _ in range(2):
        assert budget.admit("error", 10) is Verdict.OK
    assert budget.admit("error", 10) is Verdict.DROP
    assert all(budget.admit("alert", 10) is Verdict.OK for _ in range(10))  # not affected
    clock.now += 1.0
    assert [budget.admit("alert", 10) for _ in range(6)] == [Verdict.OK] * 5 + [Verdict.DROP]
    assert budget.admit("error", 10) is Verdict.OK


def test_drops_spread_out_in_time_never_close_the_link() -> None:
    clock = FakeClock()
    budget = LinkBudget(clock, budgets={"error": Rate(1, 1)}, max_drops=5, drop_window=10)
    for _ in range(100):  # one over budget every 2.5 s: 4 drops per window at most
        assert budget.admit("error", 10) is Verdict.OK
        assert budget.admit("error", 10) is Verdict.DROP
        clock.now += 2.5
    assert budget.dropped["error"] == 100


def test_big_frames_spend_the_byte_budget() -> None:
    clock = FakeClock()
    budget = LinkBudget(clock, byte_rate=Rate(1000, 4000))
    assert budget.admit("alert", 3000) is Verdict.OK
    assert budget.admit("alert", 3000) is Verdict.DROP  # 1000 bytes left
    assert budget.admit("alert", 10_000_000) is Verdict.DROP
    clock.now += 4
    assert budget.admit("alert", 10_000_000) is Verdict.OK  # counted as the whole burst
    # Late answers are big at times; only their count is budgeted.
    assert budget.admit("stale_response", 4_000_000) is Verdict.OK


def test_an_idle_budget_may_be_forgotten_but_not_while_it_refuses_the_node() -> None:
    clock = FakeClock()
    budget = LinkBudget(clock, reconnect_after=900)
    budget.admit("alert", 10)
    assert not budget.forgettable()
    budget.punish()
    clock.now += 700
    assert not budget.forgettable()  # idle, but still refusing
    clock.now += 200
    assert budget.forgettable()


def test_the_real_agent_stays_within_its_alert_budget() -> None:
    """The agent sends one alert per status change; its health engine checks every
    10 s (at least 1 s) with hysteresis. Even 500 alerts changing at once (a host
    with hundreds of mounts), and 5 changing every second after, pass."""
    clock = FakeClock()
    budget = LinkBudget(clock)
    assert all(budget.admit("alert", 300) is Verdict.OK for _ in range(500))
    for _ in range(600):
        clock.now += 1
        assert all(budget.admit("alert", 300) is Verdict.OK for _ in range(5))


def test_the_close_code_is_documented() -> None:
    assert CLOSE_OVER_BUDGET == 4008
    assert describe_close(4008).startswith("over budget")
