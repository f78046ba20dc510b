"""Storage and query semantics on a real Store (no process needed)."""

from __future__ import annotations

import math

import pytest

from tether.agent.storage import MINUTE, QueryError, Store, query

T0 = 1_700_000_040  # a whole minute


def filled(seconds: int, history: int = 3600) -> Store:
    store = Store(history_seconds=history)
    c = store.chart("test.ramp", "Ramp", "units", "test", ("a", "b"))
    for i in range(seconds):
        c.store(T0 + i, {"a": float(i), "b": 2.0 * i})
    return store


def test_points_and_values_average() -> None:
    store = filled(100)
    c = store.charts["test.ramp"]
    now = T0 + 99
    res = query(c, now, after=-20, points=5)
    assert len(res.rows) == 5
    # Newest first; each row averages 4 consecutive seconds and is stamped with the newest.
    assert [t for t, _ in res.rows] == [now - 4 * k for k in range(5)]
    assert res.rows[0][1] == [pytest.approx(97.5), pytest.approx(195.0)]
    assert res.rows[-1][1][0] == pytest.approx(81.5)
    assert res.view_update_every == 4


@pytest.mark.parametrize(("group", "expected"), [("min", 96.0), ("max", 99.0), ("sum", 390.0)])
def test_groups(group: str, expected: float) -> None:
    c = filled(100).charts["test.ramp"]
    res = query(c, T0 + 99, after=-20, points=5, group=group)
    assert res.rows[0][1][0] == pytest.approx(expected)


def test_all_points_when_points_is_zero_or_larger() -> None:
    c = filled(30).charts["test.ramp"]
    assert len(query(c, T0 + 29, after=-10).rows) == 10
    assert len(query(c, T0 + 29, after=-10, points=50).rows) == 10


def test_gaps_are_null_and_window_clamped_to_data() -> None:
    store = Store()
    c = store.chart("test.gap", "Gap", "u", "test", ("x",))
    c.store(T0, {"x": 1.0})
    c.store(T0 + 3, {"x": 4.0})  # T0+1, T0+2 were missed
    res = query(c, T0 + 10, after=-4)  # before is clamped to T0 + 3: window (T0 - 1, T0 + 3]
    assert [(t, r[0]) for t, r in res.rows] == [
        (T0 + 3, 4.0),
        (T0 + 2, None),
        (T0 + 1, None),
        (T0, 1.0),
    ]


def test_ring_wraps_and_minute_tier_answers_older_windows() -> None:
    store = filled(600, history=120)
    c = store.charts["test.ramp"]
    now = T0 + 599
    assert c.oldest_t == now - 119
    recent = query(c, now, after=-60, points=60)
    assert len(recent.rows) == 60 and recent.tier == 0
    assert recent.rows[0][1][0] == 599.0
    # 8 minutes back: older than the ring, so per-minute averages answer.
    old = query(c, now, after=-480, points=8)
    assert old.tier == 1 and old.view_update_every == MINUTE
    values = [r[0] for _, r in old.rows]
    assert len(values) == 8
    # Minute k (0-based from T0) holds seconds 60k..60k+59: average 60k+29.5.
    assert values[-1] == pytest.approx(60 * 2 + 29.5)
    assert values[1] == pytest.approx(60 * 8 + 29.5)
    assert values[0] == pytest.approx(sum(range(540, 600)) / 60)  # the current minute


def test_bad_parameters_are_named() -> None:
    c = filled(10).charts["test.ramp"]
    with pytest.raises(QueryError, match="group"):
        query(c, T0 + 9, group="median")
    with pytest.raises(QueryError, match="after"):
        query(c, T0 + 9, after=T0 + 9, before=T0)
    with pytest.raises(QueryError, match="dimensions"):
        query(c, T0 + 9, dimensions=["nope"])


def test_dimension_filter() -> None:
    c = filled(10).charts["test.ramp"]
    res = query(c, T0 + 9, after=-2, dimensions=["b"])
    assert [d.id for d in res.dimensions] == ["b"]
    assert res.rows[0][1] == [18.0]
    assert not math.isnan(c.dimensions[0].last_value)


def test_young_chart_answers_at_full_resolution() -> None:
    c = filled(30).charts["test.ramp"]
    res = query(c, T0 + 29, after=-600)
    assert res.tier == 0 and len(res.rows) == 30
    assert res.rows[-1][1][0] == 0.0
