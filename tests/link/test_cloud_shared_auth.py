"""Node auth when several Cloud processes share PostgreSQL and NATS: a
challenge and a link token each work exactly once across the processes, the
challenge caps hold across them, and removing a node on one process closes its
link on the other at once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import httpx

from tests.fixtures.cloud import Cloud
from tests.fixtures.common import poll
from tests.fixtures.peer import Link, Peer, open_ws
from tests.fixtures.scaleout import pair
from tests.fixtures.stranger import Stranger
from tests.fixtures.sweeps import last_heartbeat, quiet_heartbeat
from tether.protocol import auth
from tether.protocol.frames import HelloAck, decode, encode

KEEPALIVE = 30.0


def test_challenge_and_link_token_work_once_across_processes(
    start_cloud: Callable[..., Cloud],
    pg_url: str,
) -> None:
    # B's sweeper would close the removed node's link too, at its next sweep
    # (every 30 s with this keepalive): a close with no sweep of B in between is
    # the removal pushed from A.
    a, b = pair(start_cloud, pg_url, keepalive=KEEPALIVE)
    peer = Peer(a).claim()
    with a.client() as http:
        answer = peer.answer_of(peer.challenge(http))  # issued by A

    async def race() -> list[httpx.Response]:
        # The same answer to both processes at once, on separate connections.
        clients = [
            httpx.AsyncClient(base_url=c.url, verify=c.ssl_context(), trust_env=False)
            for c in (a, b, a, b)
        ]
        body = {"response": auth.b64encode(answer)}
        try:
            return list(
                await asyncio.gather(
                    *(c.post(auth.password_path(peer.node_id), json=body) for c in clients)
                )
            )
        finally:
            for c in clients:
                await c.aclose()

    answers = asyncio.run(race())
    assert sorted(r.status_code for r in answers) == [200, 401, 401, 401], [r.text for r in answers]
    token = next(r.json()["linkToken"] for r in answers if r.status_code == 200)

    async def links() -> None:
        # The token was issued by whichever process won; B accepts it once...
        ws = await open_ws(b, token)
        await ws.send(encode(peer.hello()))
        ack = decode(await asyncio.wait_for(ws.recv(decode=False), 10))
        assert isinstance(ack, HelloAck)
        link = Link(peer, ws, ack)
        # ...and A refuses it afterwards: one connection per token, across processes.
        try:
            await open_ws(a, token)
        except Exception as exc:  # websockets' InvalidStatus carries the 401
            assert "401" in str(exc), exc
        else:
            raise AssertionError("a used link token opened a second link")
        # Removing the node through A closes the link held by B at once (NATS).
        beat = await asyncio.to_thread(quiet_heartbeat, b, KEEPALIVE)
        r = await asyncio.to_thread(
            a.api, "DELETE", f"/api/v1/spaces/{a.space_id}/nodes/{peer.node_id}"
        )
        assert r.status_code == 204, r.text
        code, reason = await link.closed(within=20)
        assert code == 4003, (code, reason)
        after = await asyncio.to_thread(last_heartbeat, b)
        assert after == beat, "B's sweeper closed the link, not the removal pushed through NATS"

    asyncio.run(links())


def test_challenge_caps_and_answers_hold_across_processes(
    start_cloud: Callable[..., Cloud],
    pg_url: str,
) -> None:
    """A flood from another address, split over both processes, holds 2 of the
    node's challenges in all (the node's row lock), evicts nothing, and the
    node authenticates through either process; 403 only for a live challenge
    answered wrong, 401 for one the Cloud does not hold."""
    # The production keepalive (20 s): the sweeper would notice a removal only
    # after that, so a quick close proves the push.
    a, b = pair(start_cloud, pg_url, keepalive=20)
    peer = Peer(a).claim()
    with a.client() as http:
        mine = peer.challenge(http)  # the node's own, issued before the flood
    floods = [Stranger(c, peer.node_id, "challenges", concurrency=8, deadline=30) for c in (a, b)]
    for f in floods:
        f.start()
    try:
        poll(lambda: all(f.sent() >= 100 for f in floods), 20, "the flood on both processes")
        with b.client() as http:
            # The node's challenge from A survived the flood and is answered on B.
            r = peer.password(http, peer.answer_of(mine), mine.json()["challengeId"])
            assert r.status_code == 200, r.text
            fresh = peer.challenge(http)  # and the node still gets new ones
            assert fresh.status_code == 200, fresh.text
    finally:
        for f in floods:
            f.stop()
    assert sum(f.count("challenge", 200) for f in floods) == 2, [f.counts for f in floods]
    assert all(f.count("challenge", 429, "ErrRateLimited") > 0 for f in floods)
    with a.client() as http:
        fid = fresh.json()["challengeId"]
        wrong = peer.password(http, b"\x00" * auth.CHALLENGE_BYTES, fid)
        assert wrong.status_code == 403 and wrong.json()["errorMsgKey"] == "ErrIncorrectResponse"
    with b.client() as http:
        gone = peer.password(http, peer.answer_of(fresh), fid)  # used up by the wrong answer
        assert gone.status_code == 401 and gone.json()["errorMsgKey"] == "ErrChallengeExpired"
        unknown = peer.password(http, peer.answer_of(fresh), str(uuid.uuid4()))
        assert unknown.status_code == 401, unknown.text
