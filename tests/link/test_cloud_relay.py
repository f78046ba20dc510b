"""The relay against the real Cloud with a real protocol peer answering:
concurrent queries on one link, timeouts, unreachable nodes, access control,
compression."""

from __future__ import annotations

import asyncio
import json
import random
import zlib
from collections.abc import Callable

import httpx

from tests.fixtures.cloud import Cloud
from tests.fixtures.common import poll
from tests.fixtures.peer import FAST, Link, Peer, link_up
from tether.protocol.frames import ErrorFrame, QueryRequest, decode, make_response


async def serve_shuffled(link: Link, big: bytes = b"") -> None:
    """Answer each query after a random delay, so answers come back out of order."""

    async def answer(q: QueryRequest) -> None:
        await asyncio.sleep(random.uniform(0, 0.2))
        if q.path == "/api/v1/alarms":
            await link.send(ErrorFrame(code="internal", text="KeyError", id=q.id))
            return
        body = (
            big
            if q.path == "/api/v1/allmetrics"
            else json.dumps({"path": q.path, "query": q.query}).encode()
        )
        await link.send(make_response(q.id, 200, "application/json", body))

    tasks = set()
    async for message in link.ws:
        frame = decode(message if isinstance(message, bytes) else message.encode())
        if isinstance(frame, QueryRequest):
            t = asyncio.create_task(answer(frame))
            tasks.add(t)
            t.add_done_callback(tasks.discard)


def aclient(cloud: Cloud, **kw: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=cloud.url,
        verify=cloud.ssl_context(),
        trust_env=False,
        timeout=20,
        headers={"Authorization": f"Bearer {cloud.api_token}"},
        **kw,  # type: ignore[arg-type]
    )


def test_concurrent_queries_on_one_link_each_get_their_own_answer(
    start_cloud: Callable[..., Cloud],
) -> None:
    cloud = start_cloud(*FAST)
    peer = Peer(cloud).claim()
    big = json.dumps({"rows": [[i, i * 0.5] for i in range(20000)]}).encode()

    async def scenario() -> None:
        link = await link_up(peer)
        server = asyncio.create_task(serve_shuffled(link, big))
        async with aclient(cloud) as c:
            base = f"/api/v2/nodes/{peer.node_id}"
            rs = await asyncio.gather(
                *(c.get(f"{base}/data", params={"chart": f"c{i}", "points": i}) for i in range(40))
            )
            for i, r in enumerate(rs):
                assert r.status_code == 200, r.text
                assert r.json() == {"path": "/api/v1/data", "query": f"chart=c{i}&points={i}"}
                assert r.headers["cache-control"] == "no-store"
            # The agent's own path works too, and names are checked.
            r = await c.get(f"{base}/api/v1/info")
            assert r.status_code == 200 and r.json()["path"] == "/api/v1/info"
            r = await c.get(f"{base}/../../etc/passwd")
            assert r.status_code == 404
            r = await c.get(f"{base}/admin")
            assert r.status_code == 404 and "not relayed" in r.json()["errorMessage"]
            # An agent-side failure is a clear 502, not a hang.
            r = await c.get(f"{base}/alarms")
            assert r.status_code == 502 and "internal" in r.json()["errorMessage"]
            # A large answer travels compressed in the frame; the browser may
            # take it as deflate as is, or plain.
            r = await c.get(f"{base}/allmetrics", headers={"Accept-Encoding": "identity"})
            assert r.status_code == 200 and r.content == big
            raw = await c.send(
                c.build_request(
                    "GET", f"{base}/allmetrics", headers={"Accept-Encoding": "gzip, deflate"}
                ),
                stream=True,
            )
            packed = b"".join([chunk async for chunk in raw.aiter_raw()])
            await raw.aclose()
            assert raw.headers["content-encoding"] == "deflate"
            assert len(packed) < len(big) / 3 and zlib.decompress(packed) == big
        server.cancel()
        await link.ws.close()

    asyncio.run(scenario())


def test_timeout_unreachable_and_access_control(start_cloud: Callable[..., Cloud]) -> None:
    cloud = start_cloud(*FAST, "--relay-timeout", "0.5")
    peer = Peer(cloud).claim()
    base = f"/api/v2/nodes/{peer.node_id}"

    # Unseen node: 503 with its state, not a hang.
    r = cloud.api("GET", f"{base}/info")
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["errorMsgKey"] == "ErrNodeUnreachable" and body["state"] == "unseen"
    assert body["since"] and "unreachable" in body["errorMessage"]

    # Without credentials 401; a user outside the Space 404 (as for a missing node).
    assert cloud.api("GET", f"{base}/info", token="").status_code == 401
    made = cloud.cli(
        "admin", "create-user", "--email", "outsider@example.com", "--api-token", "--json"
    )
    assert made.returncode == 0, made.stderr
    outsider = json.loads(made.stdout)["api_token"]
    r = cloud.api("GET", f"{base}/info", token=outsider)
    assert r.status_code == 404 and r.json()["errorMsgKey"] == "ErrNotFound"

    async def scenario() -> None:
        link = await link_up(peer)  # never answers queries
        async with aclient(cloud) as c:
            r = await c.get(f"{base}/info")
            assert r.status_code == 504, r.text
            assert r.json()["errorMsgKey"] == "ErrGatewayTimeout"
            r = await c.get(f"{base}/info", headers={"Authorization": f"Bearer {outsider}"})
            assert r.status_code == 404
            # The late answer to the timed-out query is dropped quietly.
            q = await link.recv()
            await link.send(make_response(q.id, 200, "application/json", b"{}"))  # type: ignore[union-attr]
            # Then the node goes away: 503 with "offline" and its cause.
            await link.ws.close()
            await asyncio.to_thread(poll, lambda: peer.state() == "offline", 5, "offline")
            r = await c.get(f"{base}/info")
            assert r.status_code == 503 and r.json()["state"] == "offline"
            assert "closed by the agent" in r.json()["errorMessage"]

    asyncio.run(scenario())
    assert cloud.proc.poll() is None
