"""Scale-out behind the shipped HAProxy config: two Cloud processes on one
PostgreSQL and NATS, agents and the API reaching them only through the
balancer. Links spread over both processes, a relay through the balancer
reaches every node whichever process answers the HTTP request, and when one
process is killed its nodes link again through the balancer to the other."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from tests.fixtures.cloud import Cloud
from tests.fixtures.common import poll
from tests.fixtures.haproxy import BEHIND_BALANCER, balancer
from tests.fixtures.peer import KEEPALIVE, Link, Peer, link_up
from tests.fixtures.scaleout import pair

NODES = 6


def test_links_spread_relays_route_and_a_dead_process_fails_over(
    start_cloud: Callable[..., Cloud], pg_url: str, tmp_path: Path
) -> None:
    a, b = pair(start_cloud, pg_url, KEEPALIVE, *BEHIND_BALANCER)
    engine = sa.create_engine(a.database_url)

    def holders() -> dict[str, str]:
        """node id -> the Cloud process holding its live link, as the database says."""
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id, link_process FROM nodes WHERE state = 'live'"))
            return {r[0]: r[1] for r in rows if r[1]}

    def process_of(cloud: Cloud) -> str:
        with cloud.client() as direct:
            return str(direct.get("/api/ready").json()["process_id"])

    with balancer(a, b, tmp_path / "haproxy.log") as lb_url:
        lb = dataclasses.replace(a, url=lb_url)  # the same Cloud, seen through HAProxy
        peers = [Peer(lb, hostname=f"node-{i}").claim() for i in range(NODES)]

        def relay_all() -> bool:
            return all(
                lb.api("GET", f"/api/v2/nodes/{p.node_id}/info").status_code == 200 for p in peers
            )

        async def scenario() -> None:
            links: dict[str, Link] = {}
            serving: dict[str, asyncio.Task[None]] = {}

            async def connect(peer: Peer) -> None:
                # Until HAProxy has marked a dead process down, a connection may
                # still be sent to it: try again, as an agent's backoff would.
                for _ in range(60):
                    try:
                        links[peer.node_id] = await link_up(peer)
                        break
                    except Exception:
                        await asyncio.sleep(0.5)
                else:
                    raise AssertionError(f"{peer.hostname} could not link through HAProxy")
                serving[peer.node_id] = asyncio.create_task(links[peer.node_id].serve())

            for peer in peers:
                await connect(peer)
            # leastconn: both processes hold links, and every node answers
            # through the balancer whichever process takes the HTTP request.
            await asyncio.to_thread(
                poll, lambda: len(set(holders().values())) == 2, 10, "links on both"
            )
            assert await asyncio.to_thread(relay_all)
            # b dies without a word: the links it held drop; those nodes link
            # again through the balancer, which now sends them to a.
            # (Blocking calls go to a thread: the peers must keep answering
            # the Cloud's pings, every KEEPALIVE s.)
            b_process = await asyncio.to_thread(process_of, b)
            a_process = await asyncio.to_thread(process_of, a)
            held = await asyncio.to_thread(holders)
            on_b = [p for p in peers if held.get(p.node_id) == b_process]
            assert 0 < len(on_b) < NODES
            await asyncio.to_thread(b.stop, signal.SIGKILL)
            await asyncio.to_thread(
                poll,
                lambda: all(serving[p.node_id].done() for p in on_b),
                15,
                "b's links dropped",
            )
            assert not any(serving[p.node_id].done() for p in peers if p not in on_b)
            for peer in on_b:
                with contextlib.suppress(Exception):
                    await links[peer.node_id].ws.close()
                await connect(peer)
            await asyncio.to_thread(
                poll,
                lambda: set(holders()) == {p.node_id for p in peers},
                30,
                "every node live",
            )
            held = await asyncio.to_thread(holders)
            assert set(held.values()) == {a_process}  # all on the survivor
            assert await asyncio.to_thread(poll, relay_all, 15, "relays to every node")
            for task in serving.values():
                task.cancel()

        asyncio.run(scenario())
    engine.dispose()
