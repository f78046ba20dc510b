"""Scale-out: two real Cloud processes sharing this machine's PostgreSQL and
NATS. A node linked to process A is read through process B; presence is shared;
when A dies, B marks A's nodes offline; a link moved to B closes the one on A."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable

from websockets.exceptions import ConnectionClosed

from tests.fixtures.cloud import Cloud
from tests.fixtures.common import poll
from tests.fixtures.peer import KEEPALIVE, Peer, link_up
from tests.fixtures.scaleout import pair
from tether.protocol.frames import Disconnect
from tether.protocol.link import CLOSE_NODE_REMOVED


def test_a_browser_on_one_process_reads_a_node_linked_to_the_other(
    start_cloud: Callable[..., Cloud], pg_url: str
) -> None:
    a, b = pair(start_cloud, pg_url)
    assert (a.space_id, a.api_token) == (b.space_id, b.api_token) or a.space_id == b.space_id
    peer = Peer(a).claim()
    base = f"/api/v2/nodes/{peer.node_id}"

    async def scenario() -> None:
        link = await link_up(peer)  # linked to A
        server = asyncio.create_task(link.serve())
        # B sees it live (shared database) and relays to it through NATS.
        peer.cloud = b
        assert await asyncio.to_thread(peer.state) == "live"
        latencies = []
        for i in range(20):
            t0 = time.perf_counter()
            r = await asyncio.to_thread(b.api, "GET", f"{base}/data", params={"chart": f"c{i}"})
            latencies.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text
            assert r.json() == {"path": "/api/v1/data", "query": f"chart=c{i}"}
        print(
            f"relay via the other process (new TLS connection each): median "
            f"{sorted(latencies)[10] * 1000:.1f} ms"
        )
        # The node moves to B: the link on A is closed as replaced.
        peer.cloud = b
        link_b = await link_up(peer)
        with contextlib.suppress(ConnectionClosed):
            await asyncio.wait_for(server, 3 * KEEPALIVE + 3)  # ends when A closes it
        assert link.ws.close_code == 4009
        serve_b = asyncio.create_task(link_b.serve())
        r = await asyncio.to_thread(a.api, "GET", f"{base}/info")
        assert r.status_code == 200 and r.json()["path"] == "/api/v1/info"
        # B dies without a word: A marks the node offline within a few keepalives.
        b.stop(signal.SIGKILL)
        serve_b.cancel()
        peer.cloud = a
        t0 = time.monotonic()
        await asyncio.to_thread(poll, lambda: peer.state() == "offline", 25, "offline via A")
        print(f"offline {time.monotonic() - t0:.1f} s after its Cloud process was killed")
        node = await asyncio.to_thread(peer.node)
        assert "Cloud process lost" in node["state_cause"]
        r = await asyncio.to_thread(a.api, "GET", f"{base}/info")
        assert r.status_code == 503

    asyncio.run(scenario())


def test_disconnect_and_removal_asked_on_one_process_reach_the_link_on_the_other(
    start_cloud: Callable[..., Cloud], pg_url: str
) -> None:
    a, b = pair(start_cloud, pg_url)
    peer = Peer(a).claim()
    node_path = f"/api/v1/spaces/{b.space_id}/nodes/{peer.node_id}"

    async def scenario() -> None:
        link = await link_up(peer)  # linked to A, asked through B
        r = await asyncio.to_thread(
            b.api, "POST", f"{node_path}/disconnect", json={"reconnect_after_seconds": 42}
        )
        assert r.status_code == 200, r.text
        frame = await link.recv()
        assert isinstance(frame, Disconnect) and frame.reconnect_after_seconds == 42
        await link.closed()
        link = await link_up(peer)
        r = await asyncio.to_thread(b.api, "DELETE", node_path)
        assert r.status_code == 204, r.text
        code, _ = await link.closed(within=5)  # at once, not at A's next sweep
        assert code == CLOSE_NODE_REMOVED

    asyncio.run(scenario())
