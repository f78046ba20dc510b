"""A rolling restart behind HAProxy: two Cloud processes (their own PostgreSQL
and NATS), a simulated fleet linked through the balancer, and a client
relaying queries to every node through the balancer without pause. Each
process in turn gets SIGTERM (it drains: not ready for the balancer, every
agent told to reconnect with a spread, landing on the other process) and is
started again. No relay fails beyond the documented retry (docs/operations.md,
"Rolling restarts": RELAY_RETRY_SECONDS, a try every RELAY_RETRY_EVERY), and
no reachability alert is raised."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.fixtures.cloud import Cloud
from tests.fixtures.common import free_port, poll
from tests.fixtures.haproxy import BEHIND_BALANCER, balancer
from tests.fixtures.nats_server import NatsServer
from tests.fixtures.postgres import Postgres
from tests.fixtures.scaleout import Fleet, direct, raise_nofile

pytestmark = pytest.mark.backend_independent  # its own PostgreSQL

NODES = 40
KEEPALIVE = 5.0
# The documented retry (docs/operations.md): a relay that fails during a
# restart is tried again every second for up to 20 s.
RELAY_RETRY_SECONDS = 20.0
RELAY_RETRY_EVERY = 1.0


@dataclass
class Relays:
    ok: int = 0
    retried: int = 0  # relays that needed more than one try
    failed: list[str] = field(default_factory=list)  # beyond the retry
    longest_retry: float = 0.0


@contextmanager
def relaying(lb: Cloud, node_ids: list[str]) -> Iterator[Relays]:
    """Relay /info to each node in turn through the balancer, without pause,
    each with the documented retry; a new connection a try, as a browser
    whose kept-alive connection was closed by a stopping process."""
    seen = Relays()
    done = threading.Event()

    def one(node_id: str) -> None:
        first = time.monotonic()
        tries = 0
        while True:
            tries += 1
            try:
                r = lb.api("GET", f"/api/v2/nodes/{node_id}/info", timeout=10)
                if r.status_code == 200:
                    seen.ok += 1
                    if tries > 1:
                        seen.retried += 1
                        seen.longest_retry = max(seen.longest_retry, time.monotonic() - first)
                    return
                last = f"HTTP {r.status_code} {r.text[:120]}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() - first >= RELAY_RETRY_SECONDS:
                seen.failed.append(f"{node_id}: {last}")
                return
            time.sleep(RELAY_RETRY_EVERY)  # the documented retry's pace

    def run() -> None:
        while not done.is_set():
            for node_id in node_ids:
                if done.is_set():
                    return
                one(node_id)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        done.set()
        thread.join(RELAY_RETRY_SECONDS + 15)


def test_rolling_restart_drops_no_relay_and_raises_no_alert(
    start_cloud: Callable[..., Cloud],
    own_postgres: Postgres,
    own_nats: NatsServer,
    tmp_path: Path,
) -> None:
    raise_nofile()
    lb_port = free_port()
    args = (
        "--keepalive",
        f"{KEEPALIVE:g}",
        "--nats-url",
        own_nats.url,
        "--nats-subject-prefix",
        "t" + uuid.uuid4().hex[:10],
        *BEHIND_BALANCER,
        "--public-url",
        f"https://127.0.0.1:{lb_port}",
    )
    a = start_cloud(*args, database_url=own_postgres.url)
    b = start_cloud(*args, database_url=own_postgres.url, data_dir=a.data_dir)
    engine = sa.create_engine(a.database_url)

    def live_ids() -> list[str]:
        with engine.connect() as conn:
            return list(conn.scalars(sa.text("SELECT id FROM nodes WHERE state = 'live'")))

    def restart(cloud: Cloud) -> Cloud:
        """SIGTERM (the drain), then the same process started again."""
        assert cloud.stop(signal.SIGTERM, timeout=60) == 0
        return start_cloud(
            *args, database_url=own_postgres.url, data_dir=a.data_dir, port=cloud.port
        )

    with balancer(a, b, tmp_path / "haproxy.log", lb_port) as lb_url:
        fleet = Fleet(lb_url, a, NODES)
        try:
            fleet.wait("linked", 300)
            nodes = poll(lambda: (ids := live_ids()) and len(ids) == NODES and ids, 60, "all live")
            t0 = time.monotonic()
            with relaying(a, sorted(nodes)) as relays:  # a's URL is the balancer's
                for i, cloud in enumerate((a, b)):
                    restarted = restart(cloud)
                    # Ready again behind the balancer before the next one stops.
                    poll(
                        lambda c=restarted: direct(c).api("GET", "/api/ready").status_code == 200,
                        60,
                        "the restarted process ready",
                    )
                    if i == 0:
                        a = restarted
                    else:
                        b = restarted
                    # As an operator would: the fleet settled before the next.
                    poll(lambda: len(live_ids()) == NODES, 60, "every node live again")
                poll(lambda: len(live_ids()) == NODES, 60, "every node live after the restarts")
                poll(lambda: relays.ok > NODES, 60, "relays after the restarts")
            took = time.monotonic() - t0
            print(
                f"\nrolling restart of 2 processes under {NODES} nodes in {took:.0f} s: "
                f"{relays.ok} relays, {relays.retried} retried "
                f"(longest {relays.longest_retry:.1f} s), {len(relays.failed)} failed"
            )
            assert not relays.failed, relays.failed[:5]
            with engine.connect() as conn:
                alerts = conn.scalar(sa.text("SELECT count(*) FROM alerts"))
            assert alerts == 0
        finally:
            fleet.stop()
    engine.dispose()
