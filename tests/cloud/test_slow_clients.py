"""Slow clients are timed out (tether.cloud.http_timeouts): the bookkeeping with
a fake clock, then the attack against a real Cloud over real sockets: 300
connections with unfinished request heads, a stalled body, and more
unfinished connections than the cap, while an API call and a live link keep
working."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import ssl
import time
from collections.abc import Callable

import httpx

from tests.fixtures.clock import FakeClock
from tests.fixtures.cloud import Cloud
from tests.fixtures.peer import FAST, Link, Peer, link_up
from tether.cloud.http_timeouts import Unfinished

# -- the bookkeeping, with a fake clock ---------------------------------------------


def test_a_head_or_body_past_its_timeout_is_due_and_only_then() -> None:
    clock = FakeClock()
    u: Unfinished[str] = Unfinished(10, 20, 100, clock)
    u.head("a")
    clock.now += 5
    u.head("b")
    u.head("a")  # more bytes of the same head do not restart its clock
    clock.now += 4.9
    assert u.due() == []
    clock.now += 0.1
    assert u.due() == [("a", "head")]
    u.body("b")  # b's head done at t=9.9 after its start: its body is due at 29.9
    clock.now += 19.9
    assert u.due() == []
    clock.now += 0.1
    assert u.due() == [("b", "body")]
    assert len(u) == 0


def test_a_finished_request_is_not_timed_and_the_next_one_starts_afresh() -> None:
    clock = FakeClock()
    u: Unfinished[str] = Unfinished(10, 20, 100, clock)
    u.head("a")
    u.body("a")
    u.done("a")  # whole request in: the app is answering, nothing is due
    clock.now += 1000
    assert u.due() == []
    u.head("a")  # next request on the kept-alive connection
    clock.now += 9
    assert u.due() == []
    clock.now += 1
    assert u.due() == [("a", "head")]


def test_past_the_cap_the_oldest_unfinished_connection_is_closed() -> None:
    clock = FakeClock()
    u: Unfinished[str] = Unfinished(10, 20, 3, clock)
    assert u.head("a") == []
    clock.now += 1
    assert u.head("b") == []
    u.body("a")  # a is now the newest (its body began last)
    clock.now += 1
    assert u.head("c") == []
    assert u.head("d") == ["b"]
    assert u.head("e") == ["a"]
    assert len(u) == 3
    assert u.evicted == 2
    u.done("c")
    assert u.head("f") == []


# -- the attack against a real Cloud ---------------------------------------------------

HEADER_TIMEOUT = 1.5
BODY_TIMEOUT = 1.5
# What the Cloud may take beyond a timeout to close: its sweep runs every
# timeout/10, plus scheduling on a shared 2-core machine.
MARGIN = 3.0


def tls(cloud: Cloud) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cloud.ca_file)


async def half_open(cloud: Cloud, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection that sends `data` and nothing more."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", cloud.port, ssl=tls(cloud), server_hostname="127.0.0.1"
    )
    writer.write(data)
    await writer.drain()
    return reader, writer


async def closed_after(reader: asyncio.StreamReader, began: float, within: float) -> float:
    """Seconds from `began` until the Cloud closes the connection (EOF or reset);
    infinity if it is still open `within` seconds after `began`."""

    async def drain() -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while await reader.read(4096):
                pass

    try:
        await asyncio.wait_for(drain(), began + within - time.monotonic())
    except TimeoutError:
        return math.inf
    return time.monotonic() - began


async def is_open(reader: asyncio.StreamReader) -> bool:
    try:
        await asyncio.wait_for(reader.read(1), 0.05)
    except TimeoutError:
        return True
    except (ConnectionError, ssl.SSLError):
        return False
    return False


def aclient(cloud: Cloud) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=cloud.url,
        verify=tls(cloud),
        trust_env=False,
        timeout=10,
        headers={"Authorization": f"Bearer {cloud.api_token}"},
    )


async def still_served(cloud: Cloud, link: Link, http: httpx.AsyncClient) -> None:
    """A normal API call and a relay through the live link both answer 200."""
    r = await http.get(f"/api/v1/spaces/{cloud.space_id}/nodes")
    assert r.status_code == 200, r.text
    r = await http.get(f"/api/v2/nodes/{link.peer.node_id}/api/v1/info")
    assert r.status_code == 200, r.text
    assert r.json()["path"] == "/api/v1/info"


def test_unfinished_heads_are_closed_while_api_and_links_keep_working(
    start_cloud: Callable[..., Cloud],
) -> None:
    # A 5 s keepalive: 300 TLS handshakes on a busy 2-core machine must not be
    # mistaken for a dead link (the point is that slow clients do not starve it).
    cloud = start_cloud(
        "--keepalive",
        "5",
        "--header-timeout",
        f"{HEADER_TIMEOUT:g}",
        "--body-timeout",
        f"{BODY_TIMEOUT:g}",
    )
    peer = Peer(cloud).claim()

    async def main() -> None:
        link = await link_up(peer)
        serving = asyncio.create_task(link.serve())
        async with aclient(cloud) as http:
            began = time.monotonic()
            conns = [
                await half_open(cloud, b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Slow: 1")
                for _ in range(300)
            ]
            opened = time.monotonic() - began
            # Raw TCP that never starts TLS: bounded by the handshake timeout.
            raw = [await asyncio.open_connection("127.0.0.1", cloud.port) for _ in range(20)]
            raw_began = time.monotonic()
            bound = opened + HEADER_TIMEOUT + MARGIN
            waits = [asyncio.create_task(closed_after(r, began, bound)) for r, _ in conns]
            raw_waits = [
                asyncio.create_task(closed_after(r, raw_began, HEADER_TIMEOUT + MARGIN))
                for r, _ in raw
            ]
            await still_served(cloud, link, http)  # meanwhile
            took = await asyncio.gather(*waits)
            raw_took = await asyncio.gather(*raw_waits)
            print(
                f"opened 300 half-open TLS connections in {opened:.2f} s; all closed "
                f"{max(took):.2f} s after the first opened (header timeout {HEADER_TIMEOUT:g} s); "
                f"20 silent TCP connections closed after {max(raw_took):.2f} s"
            )
            assert max(took) <= bound
            assert min(took) >= HEADER_TIMEOUT * 0.9
            assert HEADER_TIMEOUT * 0.9 <= max(raw_took) <= HEADER_TIMEOUT + MARGIN
            await still_served(cloud, link, http)  # and after
            for _, w in [*conns, *raw]:
                w.close()
        assert not serving.done()  # the link was never dropped
        serving.cancel()
        await link.ws.close()

    asyncio.run(main())


def test_a_stalled_body_gets_408_and_the_connection_is_closed(
    start_cloud: Callable[..., Cloud],
) -> None:
    cloud = start_cloud("--header-timeout", f"{HEADER_TIMEOUT:g}", "--body-timeout", "2")

    async def main() -> None:
        head = (
            b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        )
        began = time.monotonic()
        reader, writer = await half_open(cloud, head + b'{"email":')
        answer = await asyncio.wait_for(reader.read(), 2 + MARGIN)
        took = time.monotonic() - began
        print(f"stalled body answered and closed after {took:.2f} s (body timeout 2 s)")
        status, _, rest = answer.partition(b"\r\n")
        assert status == b"HTTP/1.1 408 Request Timeout"
        headers, _, body = rest.partition(b"\r\n\r\n")
        assert b"connection: close" in headers.lower().split(b"\r\n")
        assert json.loads(body)["errorMsgKey"] == "ErrRequestTimeout"
        assert took >= 2 * 0.9
        writer.close()

    asyncio.run(main())
    # The app then sees ClientDisconnect: the client's doing, not a Cloud bug
    # to log with a traceback. (A later answer means the app has moved on.)
    assert cloud.api("GET", "/api/health").status_code == 200
    assert "Traceback" not in cloud.log_file.read_text()


def test_past_the_cap_the_oldest_unfinished_connections_are_closed_first(
    start_cloud: Callable[..., Cloud],
) -> None:
    cap = 20
    cloud = start_cloud(*FAST, "--header-timeout", "60", "--max-unfinished-connections", str(cap))
    peer = Peer(cloud).claim()

    async def main() -> None:
        link = await link_up(peer)  # an established link is not "unfinished"
        serving = asyncio.create_task(link.serve())
        partial = b"GET /api/health HTTP/1.1\r\nHost: x\r\n"
        old = [await half_open(cloud, partial) for _ in range(cap)]
        await asyncio.sleep(0.5)  # the Cloud has seen all of them before the next ones
        new = [await half_open(cloud, partial) for _ in range(cap)]
        await asyncio.sleep(0.5)
        assert [await is_open(r) for r, _ in old] == [False] * cap
        assert [await is_open(r) for r, _ in new] == [True] * cap
        async with aclient(cloud) as http:  # a prompt client still gets in
            await still_served(cloud, link, http)
        assert not serving.done()
        for _, w in [*old, *new]:
            w.close()
        serving.cancel()
        await link.ws.close()

    asyncio.run(main())
