"""Resume tokens (docs/protocol.md, resume) against a real Cloud and real agents.

A node that was linked comes back after a Cloud restart with one WebSocket
upgrade and no challenge; a replayed, expired, revoked or other node's token is
refused with 401 and the agent falls back to the challenge."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tests.fixtures.agent import AgentLauncher
from tests.fixtures.cloud import Cloud
from tests.fixtures.database import add_nodes, migrated_database
from tests.fixtures.linked import cloud_args, link_agent
from tests.fixtures.peer import FAST, Link, Peer, link_up, ssl_ctx
from tether.cloud.secret_store import ResumeTokens
from tether.protocol import auth
from tether.protocol.frames import HelloAck, decode, encode

RESUMES = ["query", "goodbye", auth.RESUME_CAPABILITY]


async def open_resumed(cloud: Cloud, claim_id: str, token: str) -> ClientConnection:
    return await connect(
        cloud.url.replace("https://", "wss://") + auth.LINK_PATH,
        ssl=ssl_ctx(cloud),
        proxy=None,
        compression=None,
        additional_headers={auth.RESUME_HEADER: auth.resume_header(claim_id, token)},
        open_timeout=10,
    )


async def resume(peer: Peer, token: str, as_node: str | None = None) -> Link:
    """Link `peer` with a resume token (presented for `as_node` if given)."""
    ws = await open_resumed(peer.cloud, as_node or peer.node_id, token)
    await ws.send(encode(peer.hello(capabilities=RESUMES)))
    ack = decode(await asyncio.wait_for(ws.recv(decode=False), 10))
    assert isinstance(ack, HelloAck), ack
    return Link(peer, ws, ack)


async def refused(peer: Peer, token: str, as_node: str | None = None) -> tuple[int, str]:
    """The upgrade's refusal: (HTTP status, errorMsgKey); fails if it is accepted."""
    try:
        ws = await open_resumed(peer.cloud, as_node or peer.node_id, token)
    except InvalidStatus as exc:
        return exc.response.status_code, json.loads(exc.response.body or b"{}")["errorMsgKey"]
    await ws.close()
    raise AssertionError("the Cloud accepted a resume token it should have refused")


def live_lines(cloud: Cloud, node_id: str) -> list[str]:
    return [x for x in cloud.log_file.read_text().splitlines() if f"node {node_id} (" in x]


async def live_line(cloud: Cloud, node_id: str, session_id: str) -> str:
    """The live line of this session: the Cloud logs it after the HelloAck
    has left, so the test may read the log before the line is there."""
    deadline = time.monotonic() + 10
    while not (lines := [x for x in live_lines(cloud, node_id) if f"session {session_id}," in x]):
        assert time.monotonic() < deadline, f"session {session_id} of {node_id} never logged live"
        await asyncio.sleep(0.05)
    return lines[0]


def test_resume_token_is_single_use_bound_and_revoked_by_the_challenge(
    start_cloud: Callable[..., Cloud],
) -> None:
    cloud = start_cloud(*FAST)
    a, b = Peer(cloud).claim(), Peer(cloud).claim()

    async def scenario() -> None:
        # An agent that does not offer "resume" gets no token (older agents).
        old = await link_up(b)
        assert old.ack.resume_token == "" and old.ack.resume_expires_in == 0
        await old.ws.close()

        first = await link_up(a, capabilities=RESUMES)
        t1 = first.ack.resume_token
        assert t1 and first.ack.resume_expires_in == 600
        await first.ws.close()

        # t1 opens one link, without a challenge; that link gets t2.
        second = await resume(a, t1)
        t2 = second.ack.resume_token
        assert t2 and t2 != t1
        await second.ws.close()
        assert "by resume token" in await live_line(cloud, a.node_id, second.ack.session_id)

        # Replayed: refused, as is a token presented for another node.
        assert await refused(a, t1) == (401, "ErrResumeRefused")
        assert await refused(b, t2, as_node=b.node_id) == (401, "ErrResumeRefused")
        assert await refused(a, "not-a-token") == (401, "ErrResumeRefused")

        # A link set up by the challenge revokes every earlier token of the
        # node: a stolen token stops working once the node itself authenticates.
        third = await resume(a, t2)
        t3 = third.ack.resume_token
        await third.ws.close()
        fourth = await link_up(a, capabilities=RESUMES)
        assert "by challenge" in await live_line(cloud, a.node_id, fourth.ack.session_id)
        assert await refused(a, t3) == (401, "ErrResumeRefused")
        await fourth.ws.close()
        # The fallback is the challenge: it still works after all the refusals.
        again = await link_up(a, capabilities=RESUMES)
        await again.ws.close()

    asyncio.run(scenario())
    text = cloud.log_file.read_text()
    assert "resume token invalid, expired, already used or not this node's" in text


def test_one_token_presented_many_times_in_one_batch_opens_one_link(tmp_path: Path) -> None:
    """The attack: a stolen token replayed in a burst, so the uses share one
    batch of the consume (one UPDATE for the whole batch), mixed with the same
    token presented for another node. Exactly one use wins, for its own node."""
    with migrated_database(tmp_path) as db:
        ids = add_nodes(db, 2)
        tokens = ResumeTokens(db, 600.0)

        async def burst() -> list[bool]:
            issued = await tokens.issue_many(ids)
            mine, other = issued[ids[0]], issued[ids[1]]
            # The first use runs alone (an idle group commit starts at once);
            # the rest queue behind it and go together in the next batch.
            uses = [tokens.consume(ids[1], other)]
            uses += [tokens.consume(ids[1], mine) for _ in range(4)]  # another node's
            uses += [tokens.consume(ids[0], mine) for _ in range(12)]
            return list(await asyncio.gather(*uses))

        got = asyncio.run(burst())
        assert got[0] is True  # the decoy batch
        assert got[1:5] == [False] * 4  # presented for the wrong node: refused, not used up
        assert got[5:].count(True) == 1, got
        assert tokens._consume.per_item > 0  # the batches ran


def test_expired_resume_token_is_refused(start_cloud: Callable[..., Cloud]) -> None:
    cloud = start_cloud(*FAST, "--resume-token-ttl", "1")
    a = Peer(cloud).claim()

    async def first() -> str:
        link = await link_up(a, capabilities=RESUMES)
        assert link.ack.resume_expires_in == 1
        await link.ws.close()
        return link.ack.resume_token

    token = asyncio.run(first())
    time.sleep(1.3)  # past the token's 1 s lifetime (wall clock, in the Cloud)
    assert asyncio.run(refused(a, token)) == (401, "ErrResumeRefused")


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_agent_resumes_after_a_cloud_restart(
    start_cloud: Callable[..., Cloud], start_agent: AgentLauncher, how: str
) -> None:
    """SIGTERM: the restart's Disconnect carries a fresh token; SIGKILL (a
    crash): the token from HelloAck. Either way the node is back with one
    upgrade and no challenge."""
    cloud = start_cloud(*cloud_args())
    linked = link_agent(cloud, start_agent, live_timeout=10)
    assert linked.aclk()["last_auth"] == "challenge"
    cloud.stop(signal.SIGTERM if how == "SIGTERM" else signal.SIGKILL)
    back = start_cloud(
        *cloud_args(), data_dir=cloud.data_dir, database_url=cloud.database_url, port=cloud.port
    )
    linked.cloud = back
    linked.wait_state("live", 30)
    assert linked.aclk()["last_auth"] == "resume"
    lines = live_lines(back, linked.node_id)
    assert lines and "by resume token" in lines[-1], lines
    assert "refused the resume token" not in linked.agent.log_text()


def test_agent_falls_back_to_the_challenge_when_its_token_is_refused(
    start_cloud: Callable[..., Cloud], start_agent: AgentLauncher
) -> None:
    cloud = start_cloud(*cloud_args())
    linked = link_agent(cloud, start_agent, live_timeout=10)
    cloud.stop(signal.SIGKILL)
    # The Cloud forgot every resume token while it was down (as if expired).
    engine = sa.create_engine(cloud.database_url)
    with engine.begin() as c:
        assert c.execute(sa.text("DELETE FROM resume_tokens")).rowcount >= 1
    engine.dispose()
    back = start_cloud(
        *cloud_args(), data_dir=cloud.data_dir, database_url=cloud.database_url, port=cloud.port
    )
    linked.cloud = back
    linked.wait_state("live", 30)
    assert linked.aclk()["last_auth"] == "challenge"
    assert "refused the resume token: authenticating with the challenge" in (
        linked.agent.log_text()
    )
    lines = live_lines(back, linked.node_id)
    assert lines and "by challenge" in lines[-1], lines
