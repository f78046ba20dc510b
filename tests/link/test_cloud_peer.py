"""The basic link tests, with the real protocol peer of tests/fixtures/peer.py."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

from tests.fixtures.cloud import Cloud
from tests.fixtures.common import poll
from tests.fixtures.peer import FAST, KEEPALIVE, Peer, link_up, open_ws


def test_hello_makes_the_node_live_with_its_metadata_refreshed_each_time(
    start_cloud: Callable[..., Cloud],
) -> None:
    cloud = start_cloud(*FAST)
    peer = Peer(cloud, hostname="before-rename").claim()
    assert peer.state() == "unseen"

    async def scenario() -> None:
        t0 = time.monotonic()
        link = await link_up(peer)
        assert link.ack.keepalive_seconds == KEEPALIVE
        uuid.UUID(link.ack.session_id)  # a uuid per connection
        node = await asyncio.to_thread(peer.node)
        live_after = time.monotonic() - t0
        assert node["state"] == "live", node
        assert live_after < 1.0, f"live after {live_after:.3f} s"
        assert node["hostname"] == "before-rename"
        assert node["os"] == "PeerOS 1" and node["agent_version"] == "9.9.9-peer"
        assert node["session_id"] == link.ack.session_id
        await link.ws.close()
        await asyncio.to_thread(poll, lambda: peer.state() == "offline", 5, "offline")

        # Renamed host, new agent: the next connection refreshes the metadata.
        peer.hostname = "after-rename"
        link2 = await link_up(peer, agent_version="10.0.0")
        assert link2.ack.session_id != link.ack.session_id
        node = await asyncio.to_thread(peer.node)
        assert node["hostname"] == "after-rename" and node["agent_version"] == "10.0.0"
        assert node["machine_id"] == peer.machine_id and node["boot_id"] == peer.boot_id
        causes = [e["cause"] for e in node["events"] if e["kind"] == "state"]
        assert any("connected from" in (c or "") for c in causes), causes
        assert node["state_since"] and node["last_address"] == "127.0.0.1"
        await link2.ws.close()

    asyncio.run(scenario())


def test_link_token_works_once_and_only_with_a_token(start_cloud: Callable[..., Cloud]) -> None:
    from websockets.exceptions import InvalidStatus

    cloud = start_cloud(*FAST)
    peer = Peer(cloud).claim()
    reply = peer.authenticate()
    assert reply.link_url == cloud.url.replace("https://", "wss://") + "/aclk"
    assert reply.keepalive_seconds == KEEPALIVE
    assert reply.backoff.base_seconds > 0 and reply.backoff.max_seconds >= 60

    async def scenario() -> None:
        ws = await open_ws(cloud, reply.link_token, reply.link_url)
        for token in (reply.link_token, None, "not-a-token"):
            try:
                await open_ws(cloud, token)
            except InvalidStatus as exc:
                assert exc.response.status_code == 401  # transient: authenticate again
                assert b"ErrLinkTokenInvalid" in exc.response.body
            else:
                raise AssertionError(f"token {token!r} was accepted")
        await ws.close()

    asyncio.run(scenario())
    log = cloud.log_file.read_text()
    assert reply.link_token not in log
    assert "link token invalid, expired or already used" in log
