"""Node authentication against the real Cloud: single use under concurrency,
replay, expiry, wrong key, unknown and removed nodes, rate limiting, and that
no secret reaches the log."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import httpx

from tests.fixtures.cloud import Cloud
from tests.fixtures.common import poll
from tests.fixtures.peer import FAST, Peer, link_up, new_key
from tether.protocol import auth


def test_concurrent_answers_to_one_challenge_yield_exactly_one_token(
    start_cloud: Callable[..., Cloud],
) -> None:
    # Room for the 7 losers' failures, so none is turned away by rate limiting
    # before its answer is judged.
    cloud = start_cloud(*FAST, "--auth-failures-per-minute", "20")
    peer = Peer(cloud).claim()
    with cloud.client() as http:
        answer = peer.answer_of(peer.challenge(http))

    async def race() -> list[httpx.Response]:
        # Separate connections, so the Cloud really handles them at once.
        clients = [
            httpx.AsyncClient(base_url=cloud.url, verify=cloud.ssl_context(), trust_env=False)
            for _ in range(8)
        ]
        try:
            body = {"response": auth.b64encode(answer)}
            return list(
                await asyncio.gather(
                    *(c.post(auth.password_path(peer.node_id), json=body) for c in clients)
                )
            )
        finally:
            for c in clients:
                await c.aclose()

    answers = asyncio.run(race())
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200] + [401] * 7, [r.text for r in answers]
    for r in answers:
        if r.status_code == 401:
            assert r.json()["errorMsgKey"] == "ErrChallengeExpired"
    token = next(r.json()["linkToken"] for r in answers if r.status_code == 200)
    log = cloud.log_file.read_text()
    assert token not in log and auth.b64encode(answer) not in log


def test_replayed_challenge_is_refused_as_expired(start_cloud: Callable[..., Cloud]) -> None:
    cloud = start_cloud(*FAST)
    peer = Peer(cloud).claim()
    with cloud.client() as http:
        answer = peer.answer_of(peer.challenge(http))
        assert peer.password(http, answer).status_code == 200
        again = peer.password(http, answer)
    assert again.status_code == 401
    assert again.json()["errorMsgKey"] == "ErrChallengeExpired"


def test_challenge_expires(start_cloud: Callable[..., Cloud]) -> None:
    cloud = start_cloud(*FAST, "--challenge-ttl", "1")
    peer = Peer(cloud).claim()
    with cloud.client() as http:
        r = peer.challenge(http)
        assert r.json()["expiresIn"] == 1
        answer = peer.answer_of(r)
        time.sleep(1.3)
        late = peer.password(http, answer)
    assert late.status_code == 401, late.text
    assert late.json()["errorMsgKey"] == "ErrChallengeExpired"


def test_challenge_is_bound_to_its_node(start_cloud: Callable[..., Cloud]) -> None:
    """Node B cannot spend node A's challenge, even if it knows the plaintext."""
    cloud = start_cloud(*FAST)
    a, b = Peer(cloud).claim(), Peer(cloud).claim()
    with cloud.client() as http:
        ra = a.challenge(http)
        answer_a, id_a = a.answer_of(ra), ra.json()["challengeId"]
        rb = b.challenge(http)
        # A's id is not a challenge of B's: unknown, so 401 (not B's wrong key).
        assert b.password(http, answer_a, id_a).json()["errorMsgKey"] == "ErrChallengeExpired"
        # B's live challenge answered with A's plaintext: B's answer is wrong.
        stolen = b.password(http, answer_a, rb.json()["challengeId"])
        assert stolen.status_code == 403
        assert stolen.json()["errorMsgKey"] == "ErrIncorrectResponse"
        assert a.password(http, answer_a, id_a).status_code == 200


def test_wrong_key_is_terminal_and_repeated_failures_are_rate_limited(
    start_cloud: Callable[..., Cloud],
) -> None:
    cloud = start_cloud(*FAST, "--auth-failures-per-minute", "3")
    peer = Peer(cloud).claim()
    impostor = Peer(cloud, node_id=peer.node_id)
    impostor.private_pem, impostor.public_pem = new_key()  # not the registered key
    with cloud.client() as http:
        for _ in range(3):
            r = peer.challenge(http)
            assert r.status_code == 200
            try:
                wrong = impostor.answer_of(r)  # OAEP refuses to decrypt with the wrong key
            except auth.AuthError:
                wrong = b"\x00" * auth.CHALLENGE_BYTES
            refused = peer.password(http, wrong, r.json()["challengeId"])
            assert refused.status_code == 403
            body = refused.json()
            assert body["errorMsgKey"] == "ErrIncorrectResponse"
            assert "tether-claim" in body["errorMessage"]  # names the fix
            assert auth.classify_auth_error(403, body["errorMsgKey"]).terminal
        # Locked out now: this address gets no challenge for this node (Retry-After)...
        limited = peer.challenge(http)
        assert limited.status_code == 429, limited.text
        assert limited.json()["errorMsgKey"] == "ErrRateLimited"
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        # ...but an answer is still judged: an unknown challenge is 401, not 403.
        again = peer.password(http, wrong, r.json()["challengeId"])
        assert again.status_code == 401 and again.json()["errorMsgKey"] == "ErrChallengeExpired"
        # Another node is not locked out by this one's failures.
        other = Peer(cloud).claim()
        r = other.challenge(http)
        assert other.password(http, other.answer_of(r), r.json()["challengeId"]).status_code == 200
    log = cloud.log_file.read_text()
    assert f"node auth answer refused for node {peer.node_id} from 127.0.0.1" in log
    assert "rate limited" in log


def test_unknown_and_removed_nodes_are_refused_and_removal_closes_the_link(
    start_cloud: Callable[..., Cloud],
) -> None:
    cloud = start_cloud(*FAST)
    with cloud.client() as http:
        unknown = str(uuid.uuid4())
        for r in (
            http.get(auth.challenge_path(unknown)),
            http.post(auth.password_path(unknown), json={"response": auth.b64encode(b"x" * 32)}),
        ):
            assert r.status_code == 404, r.text
            assert r.json()["errorMsgKey"] == "ErrNodeNotFound"
            assert auth.classify_auth_error(404, "ErrNodeNotFound").terminal
    peer = Peer(cloud).claim()

    async def scenario() -> None:
        link = await link_up(peer)
        r = await asyncio.to_thread(
            cloud.api, "DELETE", f"/api/v1/spaces/{cloud.space_id}/nodes/{peer.node_id}"
        )
        assert r.status_code == 204, r.text
        t0 = time.monotonic()
        code, reason = await link.closed(within=10)
        took = time.monotonic() - t0
        assert code == 4003, (code, reason)  # terminal: the agent stops retrying
        assert took < 3 * FAST_KEEPALIVE + 1, took

    FAST_KEEPALIVE = float(FAST[1])
    asyncio.run(scenario())
    with cloud.client() as http:
        r = peer.challenge(http)
    assert r.status_code == 404 and r.json()["errorMsgKey"] == "ErrNodeNotFound"
    poll(lambda: "closing its link" in cloud.log_file.read_text(), 5, "removal logged")


def test_malformed_answer_is_a_clear_400(start_cloud: Callable[..., Cloud]) -> None:
    cloud = start_cloud(*FAST)
    peer = Peer(cloud).claim()
    with cloud.client() as http:
        for body in (b"{", b'{"response": "***"}', b'{"nope": 1}'):
            r = http.post(auth.password_path(peer.node_id), content=body)
            assert r.status_code == 400, r.text
            assert r.json()["errorMsgKey"] == "ErrBadRequest"
