"""The relay's router: in memory, and across two Cloud "processes" through real NATS.

The NATS tests use the machine's server at 127.0.0.1:4222 with a unique subject
prefix per test, so they run in parallel without seeing each other.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import msgspec
import pytest

from tests.fixtures.nats_server import NatsServer
from tether.cloud.routing import (
    DISCONNECT,
    REMOVE,
    ControlCommand,
    InMemoryRouter,
    NatsRouter,
    NodeNotConnected,
    RelayTimeout,
    Router,
    RoutingError,
)
from tether.protocol.frames import QueryRequest, QueryResponse, make_response, response_body

NATS_URL = "nats://127.0.0.1:4222"


Handler = Callable[[QueryRequest], Awaitable[QueryResponse]]


def agent_handler(name: str, delay: float = 0.0) -> Handler:
    """Answers like an agent would: echoes who answered, the path and the budget."""

    async def handle(req: QueryRequest) -> QueryResponse:
        await asyncio.sleep(delay)
        body = msgspec.json.encode({"by": name, "path": req.path, "timeout_ms": req.timeout_ms})
        return QueryResponse(id=req.id, status=200, body=body)

    return handle


def barrier_handler(name: str, parties: int) -> Handler:
    """Answers only once `parties` requests are inside it at the same time: a
    router that ran them one after another would time out instead."""
    inside = 0
    everyone_in = asyncio.Event()

    async def handle(req: QueryRequest) -> QueryResponse:
        nonlocal inside
        inside += 1
        if inside >= parties:
            everyone_in.set()
        await everyone_in.wait()
        body = msgspec.json.encode({"by": name, "path": req.path, "timeout_ms": req.timeout_ms})
        return QueryResponse(id=req.id, status=200, body=body)

    return handle


def answer(resp: QueryResponse) -> dict[str, object]:
    return msgspec.json.decode(response_body(resp))  # type: ignore[no-any-return]


@asynccontextmanager
async def nats_pair() -> AsyncIterator[tuple[NatsRouter, NatsRouter]]:
    prefix = "t" + uuid.uuid4().hex[:12]
    a, b = NatsRouter(NATS_URL, prefix), NatsRouter(NATS_URL, prefix)
    await a.start()
    await b.start()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))  # type: ignore[arg-type]


# -- in memory ----------------------------------------------------------------


def test_in_memory_request_reaches_handler() -> None:
    async def main() -> None:
        r: Router = InMemoryRouter()
        await r.register("n1", agent_handler("local"))
        resp = await r.request("n1", QueryRequest(id=1, path="/api/v1/info"), timeout=2)
        assert answer(resp) == {"by": "local", "path": "/api/v1/info", "timeout_ms": 2000}
        with pytest.raises(NodeNotConnected, match="node n2 is not connected"):
            await r.request("n2", QueryRequest(id=2, path="/"), timeout=2)

    run(main())


def test_in_memory_timeout_and_concurrency() -> None:
    async def main() -> None:
        r = InMemoryRouter()
        await r.register("slow", agent_handler("slow", delay=5))
        await r.register("n", barrier_handler("n", parties=20))
        with pytest.raises(RelayTimeout, match=r"did not answer within 0\.3 s"):
            await r.request("slow", QueryRequest(id=1, path="/"), timeout=0.3)
        # All 20 are in the handler at once (one after another, none would answer).
        answers = await asyncio.gather(
            *(r.request("n", QueryRequest(id=i, path=f"/{i}"), timeout=5) for i in range(20))
        )
        assert [answer(a)["path"] for a in answers] == [f"/{i}" for i in range(20)]

    run(main())


def test_in_memory_stale_unregister_keeps_newer_link() -> None:
    async def main() -> None:
        r = InMemoryRouter()
        old, new = agent_handler("old"), agent_handler("new")
        await r.register("n", old)
        await r.register("n", new)  # same identity connects again
        await r.unregister("n", old)  # the old link's close arrives late
        assert answer(await r.request("n", QueryRequest(id=1, path="/"), timeout=1))["by"] == "new"
        await r.unregister("n", new)
        assert not r.is_local("n")

    run(main())


def control_recorder(
    held: set[str], heard: list[tuple[str, str]]
) -> Callable[[ControlCommand], Awaitable[bool]]:
    """A link layer holding the nodes in `held`: records every command it hears."""

    async def on_control(command: ControlCommand) -> bool:
        heard.append((command.action, command.node_id))
        return command.node_id in held

    return on_control


def test_in_memory_control_reaches_this_process_only_handler() -> None:
    async def main() -> None:
        r = InMemoryRouter()
        assert not await r.control(ControlCommand(node_id="n", action=REMOVE))  # no link layer
        heard: list[tuple[str, str]] = []
        r.set_control_handler(control_recorder({"n"}, heard))
        assert await r.control(ControlCommand(node_id="n", action=DISCONNECT, delay=5))
        assert not await r.control(ControlCommand(node_id="other", action=REMOVE))
        assert heard == [(DISCONNECT, "n"), (REMOVE, "other")]

    run(main())


def test_in_memory_router_names_its_process_and_hears_no_takeover() -> None:
    async def main() -> None:
        a, b = InMemoryRouter(), InMemoryRouter()
        routers: list[Router] = [a, b]
        assert all(re.fullmatch(r"[0-9a-f]{32}", r.process_id) for r in routers)
        assert a.process_id != b.process_id
        assert InMemoryRouter("proc-1").process_id == "proc-1"
        with pytest.raises(ValueError, match="process id"):
            InMemoryRouter("a.b")
        taken: list[str] = []

        async def on_takeover(node_id: str) -> None:
            taken.append(node_id)

        for r in routers:
            r.subscribe_takeover(on_takeover)
            await r.register("n", agent_handler("x"))  # the same node on both
        assert taken == []  # separate single-process Clouds: nobody takes over

    run(main())


# -- NATS -----------------------------------------------------------------------


@pytest.mark.nats
def test_nats_takeover_reaches_the_process_that_held_the_node() -> None:
    async def main() -> None:
        async with nats_pair() as (a, b):
            routers: list[Router] = [a, b]
            taken: dict[str, list[str]] = {r.process_id: [] for r in routers}
            for r in routers:

                async def on_takeover(node_id: str, r: Router = r) -> None:
                    taken[r.process_id].append(node_id)

                r.subscribe_takeover(on_takeover)
            await a.register("n", agent_handler("a"))
            await asyncio.sleep(0.05)  # a's ownership broadcast reaches b
            await b.register("other", agent_handler("b"))  # a does not hold it: no takeover
            await b.register("n", agent_handler("b"))  # the node moved to b
            await asyncio.sleep(0.2)  # b's ownership broadcasts reach a
            assert taken == {a.process_id: ["n"], b.process_id: []}

    run(main())


@pytest.mark.nats
def test_nats_request_reaches_node_on_other_process() -> None:
    async def main() -> None:
        async with nats_pair() as (a, b):
            await b.register("node-1", agent_handler("b"))
            await asyncio.sleep(0.05)  # ownership broadcast reaches a
            resp = await a.request("node-1", QueryRequest(id=7, path="/api/v1/data"), timeout=2)
            body = answer(resp)
            assert body["by"] == "b" and body["path"] == "/api/v1/data"
            assert 0 < int(body["timeout_ms"]) <= 2000  # type: ignore[call-overload]
            assert resp.id == 7
            # A process that started after the node linked finds it by asking.
            late = NatsRouter(NATS_URL, a.prefix)
            await late.start()
            try:
                resp = await late.request("node-1", QueryRequest(id=8, path="/x"), timeout=2)
                assert answer(resp)["by"] == "b"
            finally:
                await late.close()

    run(main())


@pytest.mark.nats
def test_nats_unknown_node_and_timeout() -> None:
    async def main() -> None:
        async with nats_pair() as (a, b):
            # "Not connected" (HTTP 503), not a wait for the full timeout (504).
            with pytest.raises(NodeNotConnected):
                await a.request("nobody", QueryRequest(id=1, path="/"), timeout=5)
            await b.register("slow", agent_handler("b", delay=10))
            await asyncio.sleep(0.05)
            with pytest.raises(RelayTimeout, match=r"within 0\.5 s"):
                await a.request("slow", QueryRequest(id=2, path="/"), timeout=0.5)

    run(main())


@pytest.mark.nats
def test_nats_concurrent_requests_and_large_answers() -> None:
    async def main() -> None:
        async with nats_pair() as (a, b):
            await b.register("n", barrier_handler("b", parties=30))
            big = b'{"data":[' + b"[1700000000,1.5,2.25]," * 20000 + b"[0]]}"

            async def big_handler(req: QueryRequest) -> QueryResponse:
                return make_response(req.id, 200, "application/json", big)

            await b.register("big", big_handler)
            await asyncio.sleep(0.05)
            # All 30 are inside b's handler at once: a slow node never holds up others.
            answers = await asyncio.gather(
                *(a.request("n", QueryRequest(id=i, path=f"/{i}"), timeout=10) for i in range(30))
            )
            assert [answer(x)["path"] for x in answers] == [f"/{i}" for i in range(30)]
            resp = await a.request("big", QueryRequest(id=99, path="/"), timeout=5)
            assert resp.encoding == "zlib" and len(resp.body) < len(big) / 5
            assert response_body(resp) == big

    run(main())


@pytest.mark.nats
def test_nats_node_moves_and_goes_away() -> None:
    async def main() -> None:
        async with nats_pair() as (a, b):
            h_b = agent_handler("b")
            await b.register("n", h_b)
            await asyncio.sleep(0.05)
            resp = await a.request("n", QueryRequest(id=1, path="/"), timeout=2)
            assert answer(resp)["by"] == "b"
            # The node reconnects to a: a answers locally, b's late close changes nothing.
            h_a = agent_handler("a")
            await a.register("n", h_a)
            await b.unregister("n", h_b)
            await asyncio.sleep(0.05)
            resp = await b.request("n", QueryRequest(id=2, path="/"), timeout=2)
            assert answer(resp)["by"] == "a"
            # Then it leaves for good: both sides say not connected, quickly.
            await a.unregister("n", h_a)
            await asyncio.sleep(0.05)
            for r in (a, b):
                with pytest.raises(NodeNotConnected):
                    await r.request("n", QueryRequest(id=3, path="/"), timeout=2)

    run(main())


@pytest.mark.nats
def test_nats_owner_process_gone() -> None:
    async def main() -> None:
        prefix = "t" + uuid.uuid4().hex[:12]
        a, b = NatsRouter(NATS_URL, prefix), NatsRouter(NATS_URL, prefix)
        await a.start()
        await b.start()
        try:
            await b.register("n", agent_handler("b"))
            await asyncio.sleep(0.05)
            assert a._owners["n"] == b.process_id
            # b dies without a word (its NATS connection just closes).
            await b._client().close()
            await asyncio.sleep(0.2)  # the NATS server notices the closed connection
            # "Not connected" (no responders), not a wait for the full timeout.
            with pytest.raises(NodeNotConnected):
                await a.request("n", QueryRequest(id=1, path="/"), timeout=3)
        finally:
            await a.close()

    run(main())


@pytest.mark.nats
def test_nats_control_reaches_only_the_holding_process() -> None:
    async def main() -> None:
        async with nats_pair() as (a, b):
            c = NatsRouter(NATS_URL, a.prefix)
            await c.start()
            try:
                heard: dict[str, list[tuple[str, str]]] = {"a": [], "b": [], "c": []}
                for name, r in (("a", a), ("b", b), ("c", c)):
                    r.set_control_handler(control_recorder({"n"}, heard[name]))
                await a.register("n", agent_handler("a"))
                await asyncio.sleep(0.05)
                # Asked on b, done on a; c never hears of it.
                assert await b.control(ControlCommand(node_id="n", action=DISCONNECT, delay=1))
                # Nobody holds "gone": no process is bothered, the answer is "not done".
                assert not await c.control(ControlCommand(node_id="gone", action=REMOVE))
                assert heard == {"a": [(DISCONNECT, "n")], "b": [], "c": []}
            finally:
                await c.close()

    run(main())


def test_nats_unreachable_server_named() -> None:
    async def main() -> None:
        from tests.fixtures.common import free_port

        url = f"nats://127.0.0.1:{free_port()}"
        r = NatsRouter(url, "t" + uuid.uuid4().hex[:8], connect_timeout=1)
        with pytest.raises(RoutingError, match=f"cannot connect to NATS at {re.escape(url)}"):
            await r.start()

    run(main())


def test_bad_subject_tokens_refused() -> None:
    with pytest.raises(ValueError, match="subject prefix"):
        NatsRouter(NATS_URL, "a.b")


@pytest.mark.nats
def test_a_nats_restart_leaves_no_live_node_unreachable(own_nats: NatsServer) -> None:
    """b is back on NATS before a (which holds n): b's lookups meanwhile find
    nobody, yet once a is back b reaches n again, since b cached no absence
    and a re-announces what it holds."""

    async def main() -> None:
        a = NatsRouter(own_nats.url, "restart", reconnect_wait=3.0)
        b = NatsRouter(own_nats.url, "restart", reconnect_wait=0.2)
        await a.start()
        await b.start()
        try:
            await a.register("n", agent_handler("a"))
            await asyncio.sleep(0.05)
            first = await b.request("n", QueryRequest(id=1, path="/"), timeout=2)
            assert answer(first)["by"] == "a"
            # NATS down for 1 s (the loop keeps running: the clients try to reconnect).
            await asyncio.to_thread(own_nats.stop)
            await asyncio.sleep(1)
            await asyncio.to_thread(own_nats.start)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while not b._client().is_connected:
                assert loop.time() < deadline, "b did not reconnect"
                await asyncio.sleep(0.05)
            assert not a._client().is_connected  # a waits 3 s between attempts
            with pytest.raises(NodeNotConnected):  # nobody holds n as far as NATS knows
                await b.request("n", QueryRequest(id=2, path="/"), timeout=1)

            async def reached() -> bool:
                try:
                    r = await b.request("n", QueryRequest(id=3, path="/"), timeout=1)
                except RoutingError:
                    return False
                return answer(r)["by"] == "a"

            while not await reached():
                assert loop.time() < deadline, "n stayed unreachable after a was back"
                await asyncio.sleep(0.1)
        finally:
            await a.close()
            await b.close()

    run(main())
