"""The rules of node authentication, in process: which challenges a node may
hold, what an answer means, and who a failure counts against. The in-memory
store runs on a fake clock; the database store (SQLite here, PostgreSQL too
when TETHER_TEST_DATABASE_URL is set) must give the same answers."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest
from sqlalchemy import update

from tests.fixtures.clock import FakeClock
from tests.fixtures.cloud import PG_ENV, _create_pg_database
from tests.fixtures.peer import new_key
from tether.cloud import node_auth
from tether.cloud.db import Database, migrate
from tether.cloud.models import Node, NodeChallenge, User
from tether.cloud.node_auth import AuthLimits, NodeAuthError, OneTimeSecrets
from tether.cloud.store import spaces as space_store
from tether.protocol import auth

TTL = 50.0


@pytest.fixture(scope="module")
def key() -> tuple[bytes, bytes]:
    return new_key()


# -- the two stores behind one face ------------------------------------------------


class Store(Protocol):
    node_id: str

    def issue(self, address: str) -> tuple[str, bytes]: ...  # (challenge id, sealed)

    def answer(self, challenge_id: str | None, plaintext: bytes) -> str: ...  # "ok" or key

    def expire_all(self) -> None: ...


class MemoryStore:
    def __init__(self, public_pem: bytes) -> None:
        self.node_id = str(uuid.uuid4())
        self.public_pem = public_pem
        self.clock = FakeClock()
        self.memory = OneTimeSecrets(self.clock)

    def issue(self, address: str) -> tuple[str, bytes]:
        challenge = auth.make_challenge()
        cid = self.memory.add_challenge(self.node_id, address, challenge, TTL)
        return cid, auth.encrypt_challenge(self.public_pem, challenge)

    def answer(self, challenge_id: str | None, plaintext: bytes) -> str:
        outcome = self.memory.consume_challenge(self.node_id, challenge_id, plaintext)
        return {"ok": "ok", "wrong": "ErrIncorrectResponse", "expired": "ErrChallengeExpired"}[
            outcome
        ]

    def expire_all(self) -> None:
        self.clock.now += TTL


class DatabaseStore:
    def __init__(self, db: Database, public_pem: bytes) -> None:
        self.db = db
        self.node_id = str(uuid.uuid4())
        with db.session(write_lock=True) as s:
            user = User(email=f"{self.node_id}@b.c", name="a", password_hash="x")
            s.add(user)
            s.flush()
            space = space_store.create_space(s, "S", user)
            s.add(
                Node(
                    id=self.node_id,
                    space_id=space.id,
                    hostname="h",
                    public_key_pem=public_pem.decode(),
                    public_key_sha256="f",
                )
            )

    def issue(self, address: str) -> tuple[str, bytes]:
        return node_auth.issue_challenge(self.db, self.node_id, TTL, address)

    def answer(self, challenge_id: str | None, plaintext: bytes) -> str:
        try:
            node_auth.answer_challenge(self.db, self.node_id, challenge_id, plaintext)
        except NodeAuthError as exc:
            return exc.key
        return "ok"

    def expire_all(self) -> None:
        past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        with self.db.session(write_lock=True) as s:
            s.execute(
                update(NodeChallenge)
                .where(NodeChallenge.node_id == self.node_id)
                .values(expires_at=past)
            )


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    drop: Callable[[], None] | None = None
    url = f"sqlite:///{Path(tmp_path_factory.mktemp('auth')) / 'c.db'}"
    if os.environ.get(PG_ENV):
        url, drop = _create_pg_database(os.environ[PG_ENV])
    db = Database(url)
    migrate(db.engine)
    yield db
    db.dispose()
    if drop:
        drop()


@pytest.fixture(params=["memory", "database"])
def store(request: pytest.FixtureRequest, key: tuple[bytes, bytes], database: Database) -> Store:
    if request.param == "memory":
        return MemoryStore(key[1])
    return DatabaseStore(database, key[1])


def plaintext(key: tuple[bytes, bytes], sealed: bytes) -> bytes:
    return auth.decrypt_challenge(key[0], sealed)


def refusal(store: Store, address: str) -> NodeAuthError:
    with pytest.raises(NodeAuthError) as info:
        store.issue(address)
    assert info.value.key == "ErrRateLimited" and info.value.status == 429
    assert info.value.retry_after is not None
    return info.value


# -- issuing: nothing is evicted, a flood gets 429 ----------------------------------


def test_a_flood_from_one_address_holds_two_challenges_and_evicts_nothing(
    store: Store, key: tuple[bytes, bytes]
) -> None:
    node_cid, node_sealed = store.issue("192.0.2.1")  # the node's own attempt
    flood = [store.issue("198.51.100.7") for _ in range(2)]
    for _ in range(20):
        refused = refusal(store, "198.51.100.7")
        assert 1 <= (refused.retry_after or 0) <= TTL
        assert "still unanswered" in refused.message
    # The node's challenge survived the flood, and the node may ask for more.
    assert store.answer(node_cid, plaintext(key, node_sealed)) == "ok"
    cid, sealed = store.issue("192.0.2.1")
    assert store.answer(cid, plaintext(key, sealed)) == "ok"
    # Answering frees the flood's slot (answered once, right or wrong).
    assert store.answer(flood[0][0], b"\x00" * 32) == "ErrIncorrectResponse"
    store.issue("198.51.100.7")


def test_a_node_holds_at_most_32_and_expired_ones_make_room(
    store: Store, key: tuple[bytes, bytes]
) -> None:
    held = [store.issue(f"203.0.113.{i // 2}") for i in range(node_auth.MAX_OUTSTANDING_PER_NODE)]
    refused = refusal(store, "192.0.2.1")
    assert "unanswered challenges" in refused.message
    assert 1 <= (refused.retry_after or 0) <= TTL
    # Those held are all still good: the cap refused the newcomer, not them.
    cid, sealed = held[0]
    assert store.answer(cid, plaintext(key, sealed)) == "ok"
    store.issue("192.0.2.1")  # the answered one made room
    refusal(store, "192.0.2.2")
    store.expire_all()
    cid, sealed = store.issue("192.0.2.2")  # expired ones do not count
    assert store.answer(cid, plaintext(key, sealed)) == "ok"


# -- answering: 403 only for a live challenge answered wrong --------------------


def test_answers_mean_what_the_protocol_says(store: Store, key: tuple[bytes, bytes]) -> None:
    cid, sealed = store.issue("192.0.2.1")
    right = plaintext(key, sealed)
    # Unknown (never issued, evicted, forgotten by a restart): ask again, 401.
    assert store.answer("no-such-challenge", right) == "ErrChallengeExpired"
    assert store.answer(str(uuid.uuid4()), right) == "ErrChallengeExpired"
    # Live, answered wrong: the wrong key, 403; and it is gone.
    assert store.answer(cid, b"\x01" * 32) == "ErrIncorrectResponse"
    assert store.answer(cid, right) == "ErrChallengeExpired"
    # Live, answered right: ok once; a replay is 401.
    cid, sealed = store.issue("192.0.2.1")
    assert store.answer(cid, plaintext(key, sealed)) == "ok"
    assert store.answer(cid, plaintext(key, sealed)) == "ErrChallengeExpired"
    # Expired: 401.
    cid, sealed = store.issue("192.0.2.1")
    store.expire_all()
    assert store.answer(cid, plaintext(key, sealed)) == "ErrChallengeExpired"


def test_older_agents_without_a_challenge_id(store: Store, key: tuple[bytes, bytes]) -> None:
    _, sealed = store.issue("192.0.2.1")
    # Matching nothing cannot be told from a lost challenge: 401, never 403.
    assert store.answer(None, b"\x01" * 32) == "ErrChallengeExpired"
    assert store.answer(None, plaintext(key, sealed)) == "ok"
    assert store.answer(None, plaintext(key, sealed)) == "ErrChallengeExpired"


def test_unknown_node_is_not_found(database: Database) -> None:
    with pytest.raises(NodeAuthError) as info:
        node_auth.issue_challenge(database, str(uuid.uuid4()), TTL, "192.0.2.1")
    assert info.value.key == "ErrNodeNotFound"
    with pytest.raises(NodeAuthError) as info:
        node_auth.answer_challenge(database, str(uuid.uuid4()), "x", b"\x00" * 32)
    assert info.value.key == "ErrNodeNotFound"


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
