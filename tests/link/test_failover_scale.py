"""Failover at scale: HAProxy (the shipped config) in front of two Cloud
processes on a PostgreSQL and a NATS server of the test's own, and a fleet of
simulated agents (bench/simulator.py: real claim, challenge, TLS WebSocket,
resume tokens, the agent's backoff) linked through the balancer.

One process is killed with SIGKILL while holding about half the links. What a
user would notice is checked: every node is live again, on the survivor; no
node got a false "duplicate" or clone conflict; each node the dead process
held has an offline record with cause "Cloud process lost" for the time it
was gone, and no node of the survivor went offline; the survivor stayed ready
(`GET /api/ready`) through the storm and HAProxy never took it out.

TETHER_FAILOVER_NODES sets the fleet (default FAILOVER_NODES, what runs here
in a few minutes on 2 shared cores); bench/failover_scale.py runs the same
scenario at 5,000 and prints its figures (docs/performance.md)."""

from __future__ import annotations

import datetime as dt
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.fixtures.cloud import Cloud
from tests.fixtures.common import free_port, poll
from tests.fixtures.haproxy import BEHIND_BALANCER, balancer
from tests.fixtures.nats_server import NatsServer
from tests.fixtures.postgres import Postgres
from tests.fixtures.scaleout import Fleet, direct, pair, raise_nofile

# Runs its own PostgreSQL whatever the backend pass: once is enough.
pytestmark = pytest.mark.backend_independent

FAILOVER_NODES = 1000
NODES = int(os.environ.get("TETHER_FAILOVER_NODES", str(FAILOVER_NODES)))
KEEPALIVE = 5.0  # short enough for quick detection, long enough not to load 2 cores with pings


@contextmanager
def watch_ready(cloud: Cloud) -> Iterator[list[tuple[float, int]]]:
    """Ask `cloud` directly for /api/ready every 0.25 s meanwhile: (seconds
    it took, status; 0 for no answer within 10 s)."""
    seen: list[tuple[float, int]] = []
    done = threading.Event()

    def run() -> None:
        with cloud.client(timeout=10) as c:
            while not done.is_set():
                t0 = time.monotonic()
                try:
                    status = c.get("/api/ready").status_code
                except httpx.HTTPError:
                    status = 0
                seen.append((time.monotonic() - t0, status))
                done.wait(0.25)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        done.set()
        thread.join(15)


def process_of(cloud: Cloud) -> str:
    with cloud.client() as direct:
        return str(direct.get("/api/ready").json()["process_id"])


def test_kill_9_of_a_process_holding_half_the_links(
    start_cloud: Callable[..., Cloud],
    own_postgres: Postgres,
    own_nats: NatsServer,
    tmp_path: Path,
) -> None:
    raise_nofile()
    lb_port = free_port()
    a, b = pair(
        start_cloud,
        own_postgres.url,
        KEEPALIVE,
        *BEHIND_BALANCER,
        "--public-url",
        f"https://127.0.0.1:{lb_port}",  # link URLs point at the balancer
        nats_url=own_nats.url,
    )
    engine = sa.create_engine(a.database_url)

    def holders() -> dict[str, str | None]:
        """node id -> the process holding its live link (None: not live)."""
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id, state, link_process FROM nodes"))
            return {r[0]: (r[2] if r[1] == "live" else None) for r in rows}

    haproxy_log = tmp_path / "haproxy.log"
    with balancer(a, b, haproxy_log, lb_port) as lb_url:
        fleet = Fleet(lb_url, a, NODES)
        try:
            t0 = time.monotonic()
            fleet.wait("linked", 900)
            print(f"\n{NODES} nodes linked through HAProxy in {time.monotonic() - t0:.1f} s")
            a_process, b_process = process_of(direct(a)), process_of(direct(b))
            held = poll(
                lambda: (h := holders()) and all(h.values()) and len(h) == NODES and h,
                60,
                "every node live",
            )
            on_b = {n for n, p in held.items() if p == b_process}
            on_a = set(held) - on_b
            print(f"before the kill: {len(on_a)} on the survivor, {len(on_b)} on the victim")
            assert on_a and on_b  # leastconn spread them
            with engine.connect() as conn:
                killed_at = conn.scalar(sa.text("SELECT now()"))
            assert isinstance(killed_at, dt.datetime)
            with watch_ready(direct(a)) as readiness:
                t0 = time.monotonic()
                os.kill(b.proc.pid, signal.SIGKILL)
                b.proc.wait(10)

                def all_on_survivor() -> bool:
                    h = holders()
                    return len(h) == NODES and all(p == a_process for p in h.values())

                poll(all_on_survivor, 180, "every node live on the survivor", every=0.5)
                # A node's offline record is written with (or before) its
                # return, so presence has settled by now.
                back = time.monotonic() - t0
            print(f"all {NODES} nodes live on the survivor {back:.1f} s after kill -9")
            slowest = max(s for s, _ in readiness)
            print(f"survivor /api/ready: {len(readiness)} checks, slowest {slowest:.2f} s")
            assert all(status == 200 for _, status in readiness), readiness
            down = [line for line in haproxy_log.read_text().splitlines() if "is DOWN" in line]
            assert not any("cloud1" in line for line in down), down  # `a` is cloud1

            with engine.connect() as conn:
                duplicates = conn.scalar(
                    sa.text(
                        "SELECT count(*) FROM node_events "
                        "WHERE kind IN ('duplicate', 'clone_refused')"
                    )
                )
                flagged = conn.scalar(
                    sa.text(
                        "SELECT count(*) FROM nodes WHERE duplicate_detected_at IS NOT NULL "
                        "OR clone_conflict IS NOT NULL"
                    )
                )
                offline = conn.execute(
                    sa.text(
                        "SELECT node_id, cause FROM node_events WHERE kind = 'state' "
                        "AND state = 'offline' AND at >= :t"
                    ),
                    {"t": killed_at},
                ).all()
            assert duplicates == 0 and flagged == 0
            lost = {nid for nid, cause in offline if cause == "Cloud process lost"}
            assert lost == on_b, (len(lost), len(on_b), offline[:5])
            assert not {nid for nid, _ in offline} & on_a  # the survivor's nodes stayed up
        finally:
            fleet.stop()
    engine.dispose()
