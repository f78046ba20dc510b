"""Cost of one rate-limit check shared by every Cloud process (tether.cloud.shared_limits).

Measures, in the same run: `limits.Window.hit` in memory (the baseline: one
process, as with SQLite), `SharedWindow.hit` on PostgreSQL from one thread
(one round trip, the upsert), and from 8 threads at once on 8 keys and on one
key (all serialised on one row). Prints microseconds per check, the ratio to
the baseline, and the load average.

    .venv/bin/python bench/shared_limits.py [--database-url URL] [--checks N]

It makes a database of its own on the server of --database-url and drops it.
"""

from __future__ import annotations

import argparse
import os
import secrets
import threading
import time

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tether.cloud.db import migrate
from tether.cloud.limits import Window
from tether.cloud.shared_limits import SharedWindow, limits_engine

DEFAULT_PG = "postgresql+psycopg://root@127.0.0.1:5432/test"


def per_check_us(fn: object, n: int) -> float:
    assert callable(fn)
    start = time.perf_counter()
    for i in range(n):
        fn(f"198.51.100.{i % 200}")
    return (time.perf_counter() - start) / n * 1e6


def threaded_us(window: SharedWindow, n: int, threads: int, one_key: bool) -> float:
    """Wall time per check with `threads` threads checking at once."""
    each = n // threads

    def work(t: int) -> None:
        for i in range(each):
            window.hit("203.0.113.1" if one_key else f"203.0.113.{t}.{i % 50}")

    ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    start = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return (time.perf_counter() - start) / (each * threads) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--database-url", default=os.environ.get("TETHER_TEST_PG", DEFAULT_PG))
    ap.add_argument("--checks", type=int, default=4000)
    a = ap.parse_args()
    base = make_url(a.database_url)
    name = f"tether_bench_{secrets.token_hex(4)}"
    admin = base.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = base.set(database=name).render_as_string(hide_password=False)
    engine = limits_engine(url)
    plain = sa.create_engine(url)  # the Cloud's usual engine: each commit waits for the disk
    try:
        migrate(engine)
        memory = Window(10**9, 60.0, time.monotonic)
        shared = SharedWindow(engine, "bench", 10**9, 60.0)
        per_check_us(shared.hit, 200)  # warm the pool

        def round_trip(_key: str) -> None:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))

        floor_us = per_check_us(round_trip, a.checks)
        durable_us = per_check_us(SharedWindow(plain, "bench-durable", 10**9, 60.0).hit, a.checks)
        # Limits of 10 in a minute: every check over the limit, as in a guessing flood.
        shared_small = SharedWindow(engine, "bench-small", 10, 60.0)
        base_us = per_check_us(memory.hit, a.checks * 10)
        one_us = per_check_us(shared.hit, a.checks)
        flood_us = per_check_us(shared_small.hit, a.checks)
        spread_us = threaded_us(shared, a.checks, 8, one_key=False)
        hot_us = threaded_us(SharedWindow(engine, "bench-hot", 10, 60.0), a.checks, 8, True)
    finally:
        engine.dispose()
        plain.dispose()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} cores")
    print(f"baseline Window.hit in memory:               {base_us:8.2f} us/check")
    for label, us in (
        ("SELECT 1 round trip (the floor)", floor_us),
        ("SharedWindow.hit, synchronous_commit on", durable_us),
        ("SharedWindow.hit, 1 thread, 200 keys", one_us),
        ("SharedWindow.hit, 1 thread, over the limit", flood_us),
        ("SharedWindow.hit, 8 threads, 8x50 keys", spread_us),
        ("SharedWindow.hit, 8 threads, one key", hot_us),
    ):
        print(f"{label + ':':45}{us:8.1f} us/check  ({us / base_us:,.0f}x baseline)")


if __name__ == "__main__":
    main()
