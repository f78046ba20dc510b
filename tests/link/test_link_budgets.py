"""One link cannot hurt the others: frame budgets, log limits, clean metadata.

A real Cloud and hostile protocol peers (tests/fixtures/peer.py): a node
flooding error frames or alerts has the excess dropped, then its link closed
with 4008 and refused (429) for the delay it was told; the Cloud's log grows by
a bounded amount; a good node's relay keeps answering meanwhile. A Hello with
control characters, ANSI escapes and bidi overrides is stored sanitized and
never reaches the log raw. A real agent backs off from the refusal.
"""

from __future__ import annotations

import asyncio
import calendar
import json
import threading
import time
from collections.abc import Callable

import httpx
import sqlalchemy as sa
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.fixtures.agent import AgentLauncher
from tests.fixtures.cloud import Cloud
from tests.fixtures.common import poll
from tests.fixtures.linked import link_agent
from tests.fixtures.peer import FAST, Link, Peer, link_up, new_key, open_ws
from tether.cloud.link_budget import BUDGETS, MAX_DROPS
from tether.protocol.auth import PasswordReply
from tether.protocol.frames import (
    AlertTransition,
    Disconnect,
    ErrorFrame,
    Frame,
    NodeUpdate,
    decode,
    encode,
)
from tether.protocol.link import CLOSE_OVER_BUDGET, OVER_BUDGET_RECONNECT_SECONDS

# A flood's whole effect on the log: a few lines, not megabytes.
MAX_LOG_GROWTH = 16 * 1024
# Peers share this test's event loop with the flood: a keepalive whose pong
# deadline is 0.5 s would drop the good peer on a busy machine.
KEEPALIVE = ("--keepalive", "5")


async def flood(
    link: Link, make: Callable[[int], Frame], count: int
) -> tuple[int, list[Frame], int | None, str | None]:
    """Send up to `count` frames as fast as the link takes them while reading
    what the Cloud sends; (frames sent, frames received, close code, reason)."""
    received: list[Frame] = []

    async def read() -> None:
        try:
            async for message in link.ws:
                assert isinstance(message, bytes)
                received.append(decode(message))
        except ConnectionClosed:
            pass

    reader = asyncio.create_task(read())
    sent = 0
    try:
        for i in range(count):
            await link.ws.send(encode(make(i)))
            sent += 1
            if sent % 50 == 0:  # a send into a free buffer does not yield: let the reader run
                await asyncio.sleep(0)
    except ConnectionClosed:
        pass
    await asyncio.wait_for(reader, 30)
    await link.ws.wait_closed()
    return sent, received, link.ws.close_code, link.ws.close_reason


def relay_until(cloud: Cloud, node_id: str, stop: threading.Event) -> list[tuple[int, float]]:
    """Relay to `node_id` back to back until `stop`; (status, seconds) of each."""
    out: list[tuple[int, float]] = []
    headers = {"Authorization": f"Bearer {cloud.api_token}"}
    with cloud.client() as c:
        while not stop.is_set() or not out:
            t = time.perf_counter()
            r = c.get(f"/api/v2/nodes/{node_id}/api/v1/info", headers=headers)
            out.append((r.status_code, time.perf_counter() - t))
    return out


def alert_events(cloud: Cloud, node_id: str) -> int:
    engine = sa.create_engine(cloud.database_url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    sa.text(
                        "SELECT count(*) FROM node_events WHERE node_id = :n AND kind = 'alert'"
                    ),
                    {"n": node_id},
                ).scalar_one()
            )
    finally:
        engine.dispose()


def challenge_refused(peer: Peer) -> httpx.Response:
    with peer.cloud.client() as http:
        return peer.challenge(http)


async def upgrade_refused(peer: Peer, reply: PasswordReply) -> InvalidStatus:
    try:
        ws = await open_ws(peer.cloud, reply.link_token, reply.link_url)
    except InvalidStatus as exc:
        return exc
    await ws.close()
    raise AssertionError("the Cloud took the link of a node it had just closed over budget")


def _assert_closed_over_budget(received: list[Frame], code: int | None, reason: str | None) -> None:
    assert (code, reason) == (CLOSE_OVER_BUDGET, "over budget")
    disconnects = [f for f in received if isinstance(f, Disconnect)]
    assert len(disconnects) == 1, received
    assert disconnects[0].code == "over_budget"
    assert disconnects[0].reconnect_after_seconds == OVER_BUDGET_RECONNECT_SECONDS


def test_error_flood_is_dropped_then_closed_and_a_good_node_keeps_relaying(
    start_cloud: Callable[..., Cloud],
) -> None:
    cloud = start_cloud(*KEEPALIVE)
    good = Peer(cloud, hostname="good").claim()
    bad = Peer(cloud, hostname="flooder").claim()

    async def scenario() -> None:
        good_link = await link_up(good)
        serving = asyncio.create_task(good_link.serve())
        bad_link = await link_up(bad)
        spare = await asyncio.to_thread(bad.authenticate)  # a link token for after the close
        stop = threading.Event()
        log_before = cloud.log_file.stat().st_size
        relays = asyncio.create_task(asyncio.to_thread(relay_until, cloud, good.node_id, stop))
        await asyncio.sleep(0.3)  # relays running before the flood starts
        sent, received, code, reason = await flood(
            bad_link, lambda i: ErrorFrame(code="boom", text=f"failure {i}"), 50_000
        )
        await asyncio.sleep(0.3)
        stop.set()
        answers = await relays
        _assert_closed_over_budget(received, code, reason)
        assert sent > BUDGETS["error"].burst + MAX_DROPS
        times = sorted(t for _, t in answers)
        print(
            f"error flood: {sent} frames sent before the close; {len(answers)} relays of the "
            f"good node, slowest {times[-1] * 1000:.1f} ms"
        )
        # The good node was answered the whole time.
        assert [s for s, _ in answers] == [200] * len(answers) and len(answers) > 5

        # The Cloud's log: the burst of reports and a few lines about the link.
        await asyncio.to_thread(poll, lambda: bad.state() == "offline", 5, "flooder offline")
        grown = cloud.log_file.read_bytes()[log_before:]
        assert len(grown) < MAX_LOG_GROWTH, len(grown)
        reports = grown.count(b"reported an error: boom")
        assert 1 <= reports <= BUDGETS["error"].burst + 1, reports
        assert b"stayed over budget (dropped error " in grown
        node = await asyncio.to_thread(bad.node)
        assert node["state_cause"].startswith("closed over budget: dropped error ")

        # Coming back at once is refused for the delay it was given: at the
        # challenge already (no RSA work), and at the upgrade with a token
        # obtained before the close.
        r = await asyncio.to_thread(challenge_refused, bad)
        assert (r.status_code, r.json()["errorMsgKey"]) == (429, "ErrOverBudget")
        assert 50 <= int(r.headers["Retry-After"]) <= 60
        exc = await upgrade_refused(bad, spare)
        assert exc.response.status_code == 429
        assert json.loads(exc.response.body)["errorMsgKey"] == "ErrOverBudget"
        assert 50 <= int(exc.response.headers["Retry-After"]) <= 60
        serving.cancel()
        await good_link.ws.close()

    asyncio.run(scenario())


def test_alert_flood_writes_a_bounded_number_of_rows_then_the_link_closes(
    start_cloud: Callable[..., Cloud],
) -> None:
    cloud = start_cloud(*KEEPALIVE, "--node-events-per-node", "100")
    bad = Peer(cloud, hostname="alerting").claim()
    budget = BUDGETS["alert"]

    async def scenario() -> None:
        link = await link_up(bad)
        log_before = cloud.log_file.stat().st_size
        t0 = time.monotonic()
        sent, received, code, reason = await flood(
            link,
            lambda i: AlertTransition(
                name=f"a{i}",
                chart="disk_space._",
                old_status="CLEAR",
                new_status="WARNING",
                at=time.time(),
            ),
            50_000,
        )
        elapsed = time.monotonic() - t0
        _assert_closed_over_budget(received, code, reason)
        # Alert rows are written in shared transactions after the frames are
        # read: wait for the burst to be on disk.
        await asyncio.to_thread(
            poll, lambda: alert_events(cloud, bad.node_id) >= budget.burst, 30, "the alert rows"
        )
        rows = alert_events(cloud, bad.node_id)
        # The burst and what the rate refilled while the flood lasted; the rest dropped.
        assert budget.burst <= rows <= budget.burst + budget.per_second * elapsed + 1, (
            rows,
            elapsed,
            sent,
        )
        assert sent > rows + MAX_DROPS
        grown = cloud.log_file.stat().st_size - log_before
        assert grown < MAX_LOG_GROWTH, grown
        print(
            f"alert flood: {sent} sent in {elapsed:.2f} s, {rows} alert rows written, "
            f"log +{grown} bytes"
        )
        # The sweeper then prunes the history to the configured count per node.
        await asyncio.to_thread(
            poll, lambda: alert_events(cloud, bad.node_id) <= 100, 30, "the history pruned", 0.5
        )

    asyncio.run(scenario())


HOSTILE_NAME = "evil\n2030-01-01 ERROR FORGED root login\x1b[31m red\x00nul\x07bel\u202eflipped"
CLEAN_NAME = (
    "evil\ufffd2030-01-01 ERROR FORGED root login\ufffd[31m red\ufffdnul\ufffdbel\ufffdflipped"
)


def test_hostile_metadata_is_stored_sanitized_and_never_logged_raw(
    start_cloud: Callable[..., Cloud],
) -> None:
    cloud = start_cloud(*FAST)
    # The claim refuses such a name outright (a human runs it and can fix it) ...
    refused = Peer(cloud)
    refused.private_pem, refused.public_pem = new_key()
    for name in (HOSTILE_NAME, "a\u202eb", "a\u2066b", "a\x85b", "a\u200bb", "a\x1b[31mb"):
        r = cloud.api(
            "PUT",
            f"/api/v1/spaces/nodes/{refused.node_id}",
            token="",
            json={
                "node": {"id": refused.node_id, "hostname": name},
                "token": cloud.claim_token,
                "publicKey": refused.public_pem.decode(),
            },
        )
        assert r.status_code == 400, (name, r.status_code)
        assert r.json()["errorMsgKey"] == "ErrInvalidNodeName", name
    # ... while the link cleans it: a node is never kept offline by its metadata.
    peer = Peer(cloud, hostname="fine").claim()

    async def scenario() -> None:
        link = await link_up(
            peer,
            hostname=HOSTILE_NAME,
            os="Linux\x1b]0;pwned\x07",
            agent_version="1.0\n\u2067",
            machine_id="m\x00",
            boot_id="b\u202d",
        )
        node = await asyncio.to_thread(peer.node)
        assert node["state"] == "live"
        assert node["hostname"] == CLEAN_NAME
        assert node["os"] == "Linux\ufffd]0;pwned\ufffd"
        assert node["agent_version"] == "1.0\ufffd\ufffd"
        assert (node["machine_id"], node["boot_id"]) == ("m\ufffd", "b\ufffd")
        await link.send(NodeUpdate(hostname="renamed\r\n\x1b[0m"))
        await link.send(
            AlertTransition(
                name="cpu\x1b[5m",
                chart="system.cpu\n",
                old_status="CLEAR",
                new_status="WARNING\u202e",
                at=float("nan"),
            )
        )
        await link.send(ErrorFrame(code="x\x1b[2J", text="line one\nFORGED line two\x00"))
        node = await asyncio.to_thread(
            poll,
            lambda: (
                (n := peer.node())["hostname"].startswith("renamed")
                and any(e["kind"] == "alert" for e in n["events"])
                and n
            ),
            5,
            "the update and the alert",
        )
        assert node["hostname"] == "renamed\ufffd\ufffd\ufffd[0m"
        alert = next(e for e in node["events"] if e["kind"] == "alert")
        assert alert["detail"]["name"] == "cpu\ufffd[5m"
        assert alert["detail"]["new_status"] == "WARNING\ufffd"
        assert alert["detail"]["at"] is None  # NaN is no JSON number
        await link.ws.close(1000, "bye\nFORGED close\x1b[31m")
        await asyncio.to_thread(poll, lambda: peer.state() == "offline", 5, "offline")
        node = await asyncio.to_thread(peer.node)
        assert "\n" not in node["state_cause"] and "\x1b" not in node["state_cause"]

    asyncio.run(scenario())
    log = cloud.log_file.read_bytes()
    for raw in (b"\x1b", b"\x00", b"\x07", "\u202e".encode(), "\u2067".encode(), b"\r"):
        assert raw not in log, raw
    assert not [line for line in log.splitlines() if line.startswith((b"2030-01-01", b"FORGED"))]
    assert b"line one\\nFORGED line two\\x00" in log  # escaped, so the log says what came


def test_a_real_agent_backs_off_when_its_node_is_refused_over_budget(
    start_cloud: Callable[..., Cloud], start_agent: AgentLauncher
) -> None:
    cloud = start_cloud(*FAST)
    linked = link_agent(cloud, start_agent)
    prefix = linked.agent.prefix
    linked.agent.stop()
    linked.wait_state("offline", 10)
    # Something holding this node's key floods: the Cloud closes it over budget.
    impostor = Peer(
        cloud,
        node_id=linked.node_id,
        private_pem=linked.agent.paths.private_key_file.read_bytes(),
        public_pem=b"unused",
    )

    async def scenario() -> None:
        link = await link_up(impostor)
        _, received, code, reason = await flood(
            link, lambda i: ErrorFrame(code="boom", text=str(i)), 50_000
        )
        _assert_closed_over_budget(received, code, reason)

    asyncio.run(scenario())
    # The agent comes back: refused with 429 and Retry-After, it waits that long.
    began = time.time()
    agent = start_agent(prefix=prefix)
    linked.agent = agent
    state = poll(
        lambda: (a := linked.aclk())["last_error"] and "429" in a["last_error"] and a,
        20,
        "the agent to be refused with 429",
    )
    assert state["connected"] is False and state["terminal"] is False
    retry_at = calendar.timegm(time.strptime(state["next_retry_at"], "%Y-%m-%dT%H:%M:%SZ"))
    assert retry_at - began >= OVER_BUDGET_RECONNECT_SECONDS - 15, state
    assert linked.state() == "offline"
