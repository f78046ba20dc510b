"""The `/aclk` endpoint and presence against the real Cloud, driven by a real
protocol peer: duplicates, stale closes, Goodbye, bad frames, Cloud restart."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Callable

import msgspec

from tests.fixtures.cloud import Cloud
from tests.fixtures.common import poll
from tests.fixtures.peer import FAST, KEEPALIVE, Link, Peer, link_up, new_key
from tether.protocol.frames import Disconnect, Goodbye, Hello, NodeUpdate, encode


def test_second_link_for_one_identity_replaces_the_first_and_is_recorded(
    start_cloud: Callable[..., Cloud],
) -> None:
    cloud = start_cloud(*FAST)
    peer = Peer(cloud).claim()
    # The same host after a restart (same machine-id, new boot id): it replaces at
    # once. Another machine-id is refused instead (tests/link/test_clones.py).
    clone = Peer(cloud, node_id=peer.node_id, hostname="clone", machine_id=peer.machine_id)
    clone.private_pem, clone.public_pem = peer.private_pem, peer.public_pem  # copied cloud.d

    async def scenario() -> None:
        first = await link_up(peer)
        second = await link_up(clone)
        code, reason = await first.closed()
        assert code == 4009, (code, reason)  # the agent treats it as a duplicate, backs off
        node = await asyncio.to_thread(peer.node)
        # The late close of the first session did not take the node offline.
        assert node["state"] == "live" and node["session_id"] == second.ack.session_id
        assert node["duplicate_detected_at"]
        dup = node["duplicate"]
        assert dup["previous"]["machine_id"] == peer.machine_id
        assert dup["previous"]["boot_id"] == peer.boot_id
        assert dup["current"]["machine_id"] == clone.machine_id
        assert dup["previous"]["address"] == dup["current"]["address"] == "127.0.0.1"
        assert dup["same_host"] is False
        kinds = [e["kind"] for e in node["events"]]
        assert "duplicate" in kinds
        assert node["hostname"] == "clone"
        # Still live a keepalive later: no flap from the replaced session.
        await asyncio.sleep(KEEPALIVE * 1.5)
        assert await asyncio.to_thread(peer.state) == "live"
        await second.ws.close()
        await asyncio.to_thread(poll, lambda: peer.state() == "offline", 5, "offline")

    asyncio.run(scenario())
    assert "DUPLICATE identity" in cloud.log_file.read_text()


def test_goodbye_records_why_and_when_the_node_comes_back(
    start_cloud: Callable[..., Cloud],
) -> None:
    cloud = start_cloud(*FAST)
    peer = Peer(cloud).claim()

    async def scenario() -> None:
        link = await link_up(peer)
        await link.send(NodeUpdate(hostname="renamed-live"))
        await link.send(Goodbye(reason="restart", expected_back_seconds=30))
        code, _ = await link.closed()
        assert code == 1000

    asyncio.run(scenario())
    node = poll(lambda: (n := peer.node())["state"] == "offline" and n, 5, "offline")
    assert node["state_cause"] == "goodbye: agent restart, expected back in 30 s"
    assert node["hostname"] == "renamed-live"
    last = next(e for e in node["events"] if e["kind"] == "state")
    assert last["state"] == "offline" and last["detail"]["expected_back_seconds"] == 30


def test_bad_frames_close_the_link_with_a_reason_and_the_cloud_keeps_serving(
    start_cloud: Callable[..., Cloud],
) -> None:
    cloud = start_cloud(*FAST)
    peer = Peer(cloud).claim()

    class Teleport(msgspec.Struct, tag="teleport", tag_field="t"):
        v: int = 1

    async def first_frame(data: bytes | str) -> tuple[int | None, str | None]:
        from tests.fixtures.peer import open_ws

        reply = await asyncio.to_thread(peer.authenticate)
        ws = await open_ws(cloud, reply.link_token, reply.link_url)
        await ws.send(data)
        link = Link(peer, ws, None)  # type: ignore[arg-type]
        return await link.closed()

    async def after_hello(data: bytes | str) -> tuple[int | None, str | None]:
        link = await link_up(peer)
        await link.ws.send(data)
        return await link.closed()

    async def scenario() -> None:
        code, reason = await first_frame(b"\xc1 not msgpack")
        assert code == 4000 and reason and "malformed frame" in reason
        code, reason = await first_frame(msgspec.msgpack.encode(Teleport()))
        assert code == 4000 and reason and "unknown frame type 'teleport'" in reason
        code, reason = await first_frame(encode(NodeUpdate(hostname="x")))
        assert code == 4000 and reason and "unexpected NodeUpdate" in reason
        code, reason = await after_hello("a text message")
        assert code == 4000 and reason and "text" in reason
        code, reason = await after_hello(
            encode(Hello(agent_version="1", hostname="h", os="o", machine_guid="g"))
        )
        assert code == 4000 and reason and "unexpected Hello" in reason
        code, reason = await after_hello(b"\x00" * (4 * 1024 * 1024 + 1))
        assert code == 1009, (code, reason)
        # Still serving: the same node links again and is live.
        link = await link_up(peer)
        assert await asyncio.to_thread(peer.state) == "live"
        await link.ws.close()

    asyncio.run(scenario())
    assert cloud.proc.poll() is None
    node = peer.node()
    causes = " | ".join(e["cause"] or "" for e in node["events"])
    assert "protocol error: unexpected Hello" in causes


def test_cloud_restart_disconnects_with_a_jittered_delay_and_records_why(
    start_cloud: Callable[..., Cloud],
) -> None:
    cloud = start_cloud(*FAST)
    peers = [Peer(cloud).claim() for _ in range(3)]
    delays: list[float] = []

    async def scenario() -> None:
        links = [await link_up(p) for p in peers]
        await asyncio.to_thread(cloud.stop, signal.SIGTERM)
        for link in links:
            frame = await link.recv()
            assert isinstance(frame, Disconnect), frame
            assert frame.reconnect_after_seconds is not None
            delays.append(frame.reconnect_after_seconds)
            code, _ = await link.closed()
            assert code == 1012

    asyncio.run(scenario())
    assert cloud.proc.returncode == 0
    assert all(1.0 <= d <= 30 for d in delays), delays
    again = cloud_restarted(start_cloud, cloud)
    for p in peers:
        p.cloud = again
        node = p.node()
        assert node["state"] == "offline" and node["state_cause"] == "Cloud restart", node

    # And they come back.
    async def back() -> None:
        link = await link_up(peers[0])
        assert await asyncio.to_thread(peers[0].state) == "live"
        await link.ws.close()

    asyncio.run(back())


def cloud_restarted(start_cloud: Callable[..., Cloud], cloud: Cloud, *extra: str) -> Cloud:
    return start_cloud(
        *FAST, *extra, data_dir=cloud.data_dir, database_url=cloud.database_url, port=cloud.port
    )


def test_a_killed_cloud_leaves_no_node_live_forever(start_cloud: Callable[..., Cloud]) -> None:
    cloud = start_cloud(*FAST)
    peer = Peer(cloud).claim()

    async def scenario() -> None:
        link = await link_up(peer)
        cloud.stop(signal.SIGKILL)
        await link.closed()

    asyncio.run(scenario())
    again = cloud_restarted(start_cloud, cloud)
    peer.cloud = again
    node = peer.node()
    assert node["state"] == "offline" and node["state_cause"] == "Cloud restarted"


def test_admin_can_ask_a_node_to_come_back_later(start_cloud: Callable[..., Cloud]) -> None:
    cloud = start_cloud(*FAST)
    peer = Peer(cloud).claim()
    path = f"/api/v1/spaces/{cloud.space_id}/nodes/{peer.node_id}/disconnect"

    async def scenario() -> None:
        link = await link_up(peer)
        r = await asyncio.to_thread(cloud.api, "POST", path, json={"reconnect_after_seconds": 42})
        assert r.status_code == 200, r.text
        frame = await link.recv()
        assert isinstance(frame, Disconnect) and frame.reconnect_after_seconds == 42
        await link.closed()

    asyncio.run(scenario())
    node = poll(lambda: (n := peer.node())["state"] == "offline" and n, 5, "offline")
    assert "disconnected: requested by" in node["state_cause"]
    # A planned absence: the close records when the node is due back.
    offline = next(e for e in node["events"] if e["state"] == "offline")
    assert offline["detail"]["expected_back_seconds"] == 42
    r = cloud.api("POST", path)  # no live link now
    assert r.status_code == 409 and r.json()["errorMsgKey"] == "ErrNodeNotLinked"
    assert cloud.api("POST", path, token="").status_code == 401


def test_graceful_stop_under_reconnect_churn_is_clean(start_cloud: Callable[..., Cloud]) -> None:
    """SIGTERM while links connect and close: every link is closed by the app,
    uvicorn raises nothing, the process exits 0 quickly, and no node is left live."""
    cloud = start_cloud(*FAST)
    private, public = new_key()
    peers = [Peer(cloud, private_pem=private, public_pem=public).claim() for _ in range(24)]
    stop = asyncio.Event()

    async def churn(peer: Peer) -> None:
        while not stop.is_set():
            try:
                link = await link_up(peer)
                await asyncio.sleep(random.uniform(0, 0.3))
                if random.random() < 0.5:
                    await link.ws.close()
                else:
                    await link.closed(within=5)
            except Exception:  # the Cloud is going away: keep trying until told to stop
                await asyncio.sleep(0.05)

    async def scenario() -> float:
        tasks = [asyncio.create_task(churn(p)) for p in peers]
        await asyncio.sleep(1.5)
        t0 = time.monotonic()
        await asyncio.to_thread(cloud.stop, signal.SIGTERM)
        took = time.monotonic() - t0
        stop.set()
        await asyncio.wait(tasks, timeout=10)
        return took

    took = asyncio.run(scenario())
    print(f"graceful stop under churn took {took:.2f} s")
    assert cloud.proc.returncode == 0
    log = cloud.log_file.read_text()
    for bad in ("InvalidState", "Traceback", "Exception in ASGI application"):
        assert bad not in log, log[-3000:]
    assert took < 20, took  # inside uvicorn's shutdown-hook limit, or writes are lost
    again = cloud_restarted(start_cloud, cloud)
    r = again.api("GET", f"/api/v1/spaces/{again.space_id}/nodes")
    states = {n["state"] for n in r.json() if n["id"] in {p.node_id for p in peers}}
    assert "live" not in states and states <= {"offline", "unseen"}, states
