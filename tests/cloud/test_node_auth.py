"""The rules of node authentication, in process: which challenges a node may
hold, what an answer means, how link tokens are used, and who a failure counts
against. Every secret-store scenario runs through the `SecretStore` interface
against both implementations, on a fake clock: `MemorySecretStore` and
`DatabaseSecretStore` (SQLite here, PostgreSQL too when
TETHER_TEST_DATABASE_URL is set) must give the same answers."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import delete

from tests.fixtures.clock import FakeClock
from tests.fixtures.database import migrated_database
from tests.fixtures.peer import new_key
from tether.cloud.db import Database
from tether.cloud.models import Node, User
from tether.cloud.node_auth import AuthLimits
from tether.cloud.secret_store import (
    LINK_TOKEN_TTL_SECONDS,
    MAX_OUTSTANDING_PER_NODE,
    Answered,
    ChallengeRefused,
    DatabaseSecretStore,
    MemorySecretStore,
    SecretStore,
    UnknownNode,
)
from tether.cloud.store import spaces as space_store
from tether.protocol import auth

TTL = 50.0


@pytest.fixture(scope="module")
def key() -> tuple[bytes, bytes]:
    return new_key()


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    with migrated_database(tmp_path_factory.mktemp("auth")) as db:
        yield db


def add_node(db: Database, public_pem: bytes) -> str:
    node_id = str(uuid.uuid4())
    with db.session(write_lock=True) as s:
        user = User(email=f"{node_id}@b.c", name="a", password_hash="x")
        s.add(user)
        s.flush()
        space = space_store.create_space(s, "S", user)
        s.add(
            Node(
                id=node_id,
                space_id=space.id,
                hostname="h",
                public_key_pem=public_pem.decode(),
                public_key_sha256="f",
            )
        )
    return node_id


@dataclass
class Secrets:
    """One store behind the interface, its fake clock and a registered node."""

    store: SecretStore
    clock: FakeClock
    db: Database
    node_id: str
    private_pem: bytes

    async def issue(self, address: str) -> tuple[str, bytes]:  # (challenge id, sealed)
        return await self.store.issue_challenge(self.node_id, address, TTL)

    async def answer(self, challenge_id: str | None, plaintext: bytes) -> Answered:
        return await self.store.answer_challenge(self.node_id, challenge_id, plaintext)

    async def outcome(self, challenge_id: str | None, plaintext: bytes) -> str:
        return (await self.answer(challenge_id, plaintext)).outcome

    def plaintext(self, sealed: bytes) -> bytes:
        return auth.decrypt_challenge(self.private_pem, sealed)

    async def refusal(self, address: str) -> ChallengeRefused:
        with pytest.raises(ChallengeRefused) as info:
            await self.issue(address)
        return info.value


@pytest.fixture(params=["memory", "database"])
def secrets(
    request: pytest.FixtureRequest, key: tuple[bytes, bytes], database: Database
) -> Secrets:
    node_id = add_node(database, key[1])
    store: SecretStore
    if request.param == "memory":
        clock = FakeClock()
        store = MemorySecretStore(database, clock)
    else:
        # Wall time, whole seconds (so differences are exact), moved by the test.
        clock = FakeClock(float(int(time.time())))
        store = DatabaseSecretStore(database, lambda: dt.datetime.fromtimestamp(clock.now, dt.UTC))
    return Secrets(store, clock, database, node_id, key[0])


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))


# -- issuing: nothing is evicted, a flood gets 429 ----------------------------------


def test_a_flood_from_one_address_holds_two_challenges_and_evicts_nothing(
    secrets: Secrets,
) -> None:
    async def main() -> None:
        node_cid, node_sealed = await secrets.issue("192.0.2.1")  # the node's own attempt
        flood = [await secrets.issue("198.51.100.7") for _ in range(2)]
        secrets.clock.now += 10
        for _ in range(20):
            refused = await secrets.refusal("198.51.100.7")
            assert refused.retry_after == TTL - 10  # until the flood's oldest expires
            assert refused.message == (
                "2 challenges for this node from 198.51.100.7 are still unanswered; "
                "answer one, or ask again in 40 seconds."
            )
        # The node's challenge survived the flood, and the node may ask for more.
        assert await secrets.outcome(node_cid, secrets.plaintext(node_sealed)) == "ok"
        cid, sealed = await secrets.issue("192.0.2.1")
        assert await secrets.outcome(cid, secrets.plaintext(sealed)) == "ok"
        # Answering frees the flood's slot (answered once, right or wrong).
        assert await secrets.outcome(flood[0][0], b"\x00" * 32) == "wrong"
        await secrets.issue("198.51.100.7")

    run(main())


def test_a_node_holds_at_most_32_and_expired_ones_make_room(secrets: Secrets) -> None:
    async def main() -> None:
        held = [await secrets.issue(f"203.0.113.{i // 2}") for i in range(MAX_OUTSTANDING_PER_NODE)]
        refused = await secrets.refusal("192.0.2.1")
        assert refused.message == (
            "This node has 32 unanswered challenges, the most it may have; ask again in 50 seconds."
        )
        assert refused.retry_after == TTL
        # Those held are all still good: the cap refused the newcomer, not them.
        cid, sealed = held[0]
        assert await secrets.outcome(cid, secrets.plaintext(sealed)) == "ok"
        await secrets.issue("192.0.2.1")  # the answered one made room
        await secrets.refusal("192.0.2.2")
        secrets.clock.now += TTL
        cid, sealed = await secrets.issue("192.0.2.2")  # expired ones do not count
        assert await secrets.outcome(cid, secrets.plaintext(sealed)) == "ok"

    run(main())


def test_concurrent_askers_are_all_counted(secrets: Secrets) -> None:
    async def main() -> None:
        results = await asyncio.gather(
            *(secrets.issue("198.51.100.7") for _ in range(5)), return_exceptions=True
        )
        assert sum(isinstance(r, tuple) for r in results) == 2
        assert sum(isinstance(r, ChallengeRefused) for r in results) == 3

    run(main())


def test_unknown_node_gets_no_challenge(secrets: Secrets) -> None:
    async def main() -> None:
        nobody = str(uuid.uuid4())
        with pytest.raises(UnknownNode):
            await secrets.store.issue_challenge(nobody, "192.0.2.1", TTL)
        # Nothing was held for it: an answer finds no challenge.
        answered = await secrets.store.answer_challenge(nobody, None, b"\x00" * 32)
        assert answered == Answered("expired")

    run(main())


# -- answering: "wrong" only for a live challenge answered wrong -------------------


def test_answers_mean_what_the_protocol_says(secrets: Secrets) -> None:
    async def main() -> None:
        cid, sealed = await secrets.issue("192.0.2.1")
        right = secrets.plaintext(sealed)
        # Unknown (never issued, evicted, forgotten by a restart): ask again, 401.
        assert await secrets.outcome("no-such-challenge", right) == "expired"
        assert await secrets.outcome(str(uuid.uuid4()), right) == "expired"
        # Live, answered wrong: the wrong key, 403; and it is gone.
        assert await secrets.answer(cid, b"\x01" * 32) == Answered("wrong")
        assert await secrets.outcome(cid, right) == "expired"
        # Live, answered right: ok once, with a link token; a replay is 401.
        cid, sealed = await secrets.issue("192.0.2.1")
        answered = await secrets.answer(cid, secrets.plaintext(sealed))
        assert answered.outcome == "ok" and len(answered.link_token) >= 32
        assert await secrets.answer(cid, secrets.plaintext(sealed)) == Answered("expired")
        # Expired: 401, a moment after its lifetime and not before.
        cid, sealed = await secrets.issue("192.0.2.1")
        secrets.clock.now += TTL
        assert await secrets.outcome(cid, secrets.plaintext(sealed)) == "expired"
        cid, sealed = await secrets.issue("192.0.2.1")
        secrets.clock.now += TTL - 1
        assert await secrets.outcome(cid, secrets.plaintext(sealed)) == "ok"

    run(main())


def test_older_agents_without_a_challenge_id(secrets: Secrets) -> None:
    async def main() -> None:
        _, sealed = await secrets.issue("192.0.2.1")
        # Matching nothing cannot be told from a lost challenge: 401, never 403.
        assert await secrets.outcome(None, b"\x01" * 32) == "expired"
        assert await secrets.outcome(None, secrets.plaintext(sealed)) == "ok"
        assert await secrets.outcome(None, secrets.plaintext(sealed)) == "expired"

    run(main())


def test_of_concurrent_answers_one_wins(secrets: Secrets) -> None:
    async def main() -> None:
        cid, sealed = await secrets.issue("192.0.2.1")
        right = secrets.plaintext(sealed)
        answers = await asyncio.gather(*(secrets.answer(cid, right) for _ in range(5)))
        assert sorted(a.outcome for a in answers) == ["expired"] * 4 + ["ok"]

    run(main())


# -- link tokens: one connection each, a minute at most ----------------------------


async def link_token(secrets: Secrets) -> str:
    cid, sealed = await secrets.issue("192.0.2.1")
    answered = await secrets.answer(cid, secrets.plaintext(sealed))
    assert answered.outcome == "ok"
    return answered.link_token


def test_a_link_token_names_its_node_once(secrets: Secrets) -> None:
    async def main() -> None:
        token = await link_token(secrets)
        assert await secrets.store.consume_link_token("not-" + token) is None
        assert await secrets.store.consume_link_token(token) == secrets.node_id
        assert await secrets.store.consume_link_token(token) is None  # a replay

    run(main())


def test_a_link_token_expires_after_a_minute(secrets: Secrets) -> None:
    async def main() -> None:
        late, in_time = await link_token(secrets), await link_token(secrets)
        secrets.clock.now += LINK_TOKEN_TTL_SECONDS - 1
        assert await secrets.store.consume_link_token(in_time) == secrets.node_id
        secrets.clock.now += 1
        assert await secrets.store.consume_link_token(late) is None

    run(main())


def test_a_removed_nodes_secrets_stop_working(secrets: Secrets) -> None:
    async def main() -> None:
        token = await link_token(secrets)
        cid, sealed = await secrets.issue("192.0.2.1")
        with secrets.db.session(write_lock=True) as s:  # the node is removed
            s.execute(delete(Node).where(Node.id == secrets.node_id))
        await secrets.store.forget_node(secrets.node_id)
        assert await secrets.store.consume_link_token(token) is None
        assert await secrets.outcome(cid, secrets.plaintext(sealed)) == "expired"

    run(main())


def test_purging_keeps_what_is_live(secrets: Secrets) -> None:
    async def main() -> None:
        old_token = await link_token(secrets)
        old_cid, old_sealed = await secrets.issue("192.0.2.1")
        secrets.clock.now += TTL - 1
        token = await link_token(secrets)
        cid, sealed = await secrets.issue("192.0.2.1")
        secrets.clock.now += 2  # the first ones are expired now, the second not
        await secrets.store.purge_expired()
        assert await secrets.outcome(old_cid, secrets.plaintext(old_sealed)) == "expired"
        assert await secrets.outcome(cid, secrets.plaintext(sealed)) == "ok"
        assert await secrets.store.consume_link_token(token) == secrets.node_id
        secrets.clock.now += LINK_TOKEN_TTL_SECONDS
        await secrets.store.purge_expired()
        assert await secrets.store.consume_link_token(old_token) is None

    run(main())


# -- budgets: failures count against (node, address) ------------------------------


def test_failures_from_one_address_never_refuse_another() -> None:
    clock = FakeClock()
    limits = AuthLimits(failures_per_minute=5, requests_per_address_per_minute=1200, clock=clock)
    for _ in range(5):
        assert limits.may_challenge("node", "198.51.100.7") is None
        limits.failed("node", "198.51.100.7")
    refused = limits.may_challenge("node", "198.51.100.7")
    assert refused is not None and refused.key == "ErrRateLimited" and refused.retry_after == 60
    assert limits.may_challenge("node", "192.0.2.1") is None  # the node's own address
    assert limits.may_challenge("other", "198.51.100.7") is None  # another node
    # 5 a minute keep the stranger refused, and only the stranger.
    for _ in range(10):
        clock.now += 12
        limits.failed("node", "198.51.100.7")
        assert limits.may_challenge("node", "198.51.100.7") is not None
        assert limits.may_challenge("node", "192.0.2.1") is None
    clock.now += 60
    assert limits.may_challenge("node", "198.51.100.7") is None  # a quiet minute later


def test_success_clears_the_callers_failures_and_an_address_has_4x_across_nodes() -> None:
    clock = FakeClock()
    limits = AuthLimits(failures_per_minute=5, requests_per_address_per_minute=1200, clock=clock)
    for _ in range(4):
        limits.failed("node", "192.0.2.1")
    limits.succeeded("node", "192.0.2.1")
    limits.failed("node", "192.0.2.1")
    assert limits.may_challenge("node", "192.0.2.1") is None
    for i in range(20):
        limits.failed(f"n{i}", "198.51.100.7")
    assert limits.may_challenge("fresh", "198.51.100.7") is not None  # 20 across nodes
    assert limits.may_challenge("fresh", "192.0.2.1") is None


def test_requests_per_address_are_counted_when_they_start() -> None:
    clock = FakeClock()
    limits = AuthLimits(failures_per_minute=5, requests_per_address_per_minute=3, clock=clock)
    assert [limits.admit("198.51.100.7") for _ in range(3)] == [None, None, None]
    refused = limits.admit("198.51.100.7")
    assert refused is not None and refused.status == 429 and refused.retry_after == 60
    assert limits.admit("192.0.2.1") is None
    clock.now += 60
    assert limits.admit("198.51.100.7") is None
