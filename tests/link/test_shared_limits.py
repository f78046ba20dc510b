"""Limits on guesses counted once for the whole Cloud (tether.cloud.shared_limits).

`SharedWindow` keeps `limits.Window`'s meaning in PostgreSQL: checked here
against the in-memory window under random operations and a fake clock, under
concurrent hits from many threads, and end to end with two real Cloud
processes: 11 wrong claims spread over both hit the limit of 10, and wrong
sign-ins the same."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.api import claim
from tests.fixtures.clock import FakeClock
from tests.fixtures.cloud import Cloud
from tests.fixtures.scaleout import pair
from tether.cloud.db import migrate
from tether.cloud.limits import Window
from tether.cloud.shared_limits import SharedWindow


@pytest.fixture
def engine(pg_url: str) -> Iterator[sa.Engine]:
    eng = sa.create_engine(pg_url)
    migrate(eng)
    yield eng
    eng.dispose()


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["hit", "add", "undo", "forget", "retry_after", "count", "tick"]),
        st.sampled_from(["a", "b"]),
        st.floats(min_value=0.0, max_value=25.0),
    ),
    max_size=40,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=_OPS, limit=st.integers(min_value=1, max_value=4))
def test_shared_window_answers_like_the_window_in_memory(
    engine: sa.Engine, ops: list[tuple[str, str, float]], limit: int
) -> None:
    clock = FakeClock(1_700_000_000.0)
    local = Window(limit, 30.0, clock)
    shared = SharedWindow(engine, f"t{uuid.uuid4().hex[:12]}", limit, 30.0, clock)
    for op, key, dt in ops:
        if op == "tick":
            clock.now += dt
            continue
        assert getattr(shared, op)(key) == getattr(local, op)(key), (op, key)


def test_concurrent_hits_never_slip_under_the_limit(engine: sa.Engine) -> None:
    """Forty threads (forty connections) hit one key at once: exactly 10 pass."""
    windows = [SharedWindow(engine, "concurrent", 10, 60.0) for _ in range(4)]
    start = threading.Barrier(40)
    passed: list[int] = []

    def one(i: int) -> None:
        start.wait()
        passed.append(windows[i % 4].hit("198.51.100.7") == 0)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(passed) == 10
    assert windows[0].count("198.51.100.7") == 10
    assert windows[1].retry_after("198.51.100.7") > 0


def test_wrong_claims_and_sign_ins_across_two_processes_hit_one_limit(
    start_cloud: Callable[..., Cloud], pg_url: str
) -> None:
    a, b = pair(start_cloud, pg_url)
    bad = "tct_abcdefgh_" + "x" * 43
    # Ten wrong claims, alternating: five per process, ten in all.
    for i in range(10):
        r = claim((a, b)[i % 2], token=bad)
        assert r.status_code == 403, r.text
    # The eleventh is refused on either process, a good claim as well: the
    # address used up the Cloud's budget, not one process's.
    for cloud in (a, b):
        r = claim(cloud, token=bad)
        assert r.status_code == 429, r.text
        assert r.json()["errorMsgKey"] == "ErrTooManyRequests"
        assert int(r.headers["Retry-After"]) > 0
        assert claim(cloud).status_code == 429

    # Sign-ins: 10 attempts per address per minute, across both processes.
    def login(cloud: Cloud) -> int:
        body = {"email": cloud.admin_email, "password": "wrong password"}
        return cloud.api("POST", "/api/v1/auth/login", token="", json=body).status_code

    assert [login((a, b)[i % 2]) for i in range(10)] == [401] * 10
    assert login(a) == 429
    assert login(b) == 429
