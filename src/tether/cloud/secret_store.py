"""The one-time secrets of node authentication: challenges and link tokens.

Only hashes are kept. A challenge is bound to its node and to the address that
asked (limits.address_key), has an id the asker gets, and is consumed by its
answer once, right or wrong; a right answer gets a one-time link token for one
`/aclk` connection. Issuing never evicts a challenge somebody may still be
answering: a node holds at most MAX_OUTSTANDING_PER_NODE unanswered ones, at
most MAX_OUTSTANDING_PER_ADDRESS of them for one address (`outstanding_refusal`).

`SecretStore` is the interface; `make_secret_store` picks one of two at start-up:

- `MemorySecretStore` (one process, no NATS: the default): dictionaries
  touched only from the event loop, so consuming is a dictionary pop and single
  use needs no lock. A link setup then costs one database read (the node's
  public key, read in shared batches) instead of write transactions serialised
  through SQLite's write lock. A restart forgets them: an agent that was
  linked comes back with its resume token instead.
- `DatabaseSecretStore` (several processes sharing the database and NATS): rows,
  counted under the node's row lock and consumed with one conditional
  UPDATE ... RETURNING, so of concurrent answers on any process exactly one wins.

Resume tokens (`ResumeTokens`, docs/protocol.md "Resume") are rows in both:
they exist to outlive the process that issued them (a Cloud restart, or
another process in scale-out). Bound to their node, single use (a conditional
UPDATE ... RETURNING), short-lived; a link set up by the challenge revokes the
node's earlier ones.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from sqlalchemy import delete, insert, select, tuple_, update
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from tether.cloud import limits
from tether.cloud.batching import GroupCommit
from tether.cloud.db import Database
from tether.cloud.models import LinkToken, Node, NodeChallenge, ResumeToken, new_id, utcnow
from tether.cloud.settings import CloudSettings
from tether.protocol import auth

LINK_TOKEN_TTL_SECONDS = 60.0
# Unanswered challenges a node may hold, and of those one address (limits.address_key).
# The agent needs one for a few milliseconds per attempt; 2 lets it lose one
# answer (a dropped connection) without waiting. 32 means a flood needs 16
# addresses (IPv6 /64s) to fill a node's slots.
MAX_OUTSTANDING_PER_NODE = 32
MAX_OUTSTANDING_PER_ADDRESS = 2

Outcome = Literal["ok", "wrong", "expired"]


class UnknownNode(Exception):
    """No node has this id (never claimed here, or removed)."""

    def __init__(self, node_id: str) -> None:
        super().__init__(f"no node {node_id[:40]}")
        self.node_id = node_id


class ChallengeRefused(Exception):
    """A cap on unanswered challenges is reached; ask again in `retry_after` s."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True)
class Answered:
    """What an answer to a challenge is: "ok" (the live challenge named, or
    without an id the one the answer matches, answered right), "wrong" (the
    named live challenge answered wrong) or "expired" (no such live challenge:
    expired, used, never issued, forgotten by a restart, or no such node).
    Either way that challenge is gone."""

    outcome: Outcome
    link_token: str = ""  # "ok" only: the node's new one-time link token


class SecretStore(Protocol):
    async def issue_challenge(self, node_id: str, address: str, ttl: float) -> tuple[str, bytes]:
        """Hold a new challenge for the node, asked for by `address` (an
        address key): (its id, it encrypted to the node's key). Raises
        UnknownNode, or ChallengeRefused at a cap (nothing is evicted)."""

    async def answer_challenge(
        self, node_id: str, challenge_id: str | None, answer: bytes
    ) -> Answered:
        """Consume the challenge answered; a right answer issues a link token."""

    async def consume_link_token(self, token: str) -> str | None:
        """The node id of a valid, unused link token, now used; else None."""

    def resume_grant(self, node_id: str, revoke_others: bool) -> ResumeGrant:
        """A new resume token for the node (its HelloAck's), written by
        `ResumeGrant.write` in the transaction that records the link live;
        with `revoke_others` (the link was set up by the challenge) every
        earlier one of the node stops working."""

    async def issue_resume_tokens(self, node_ids: list[str]) -> dict[str, str]:
        """One new resume token each, in one write (a stopping Cloud's Disconnects)."""

    async def consume_resume_token(self, node_id: str, token: str) -> bool:
        """Whether `token` is a valid, unused resume token of `node_id`, now used."""

    async def forget_node(self, node_id: str) -> None:
        """A removed node's outstanding challenges and tokens stop working."""

    async def purge_expired(self) -> None:
        """Forget expired challenges, link and resume tokens (run by the link sweeper)."""


def make_secret_store(
    settings: CloudSettings, db: Database, clock: limits.Clock = time.monotonic
) -> SecretStore:
    """In memory for one process; in the database when several share it (NATS)."""
    resume = ResumeTokens(db, settings.resume_token_ttl_seconds)
    if settings.nats_url:
        return DatabaseSecretStore(db, resume=resume)
    return MemorySecretStore(db, clock, resume=resume)


def outstanding_refusal(
    live: list[tuple[str, float]],
    address: str,
    per_node: int = MAX_OUTSTANDING_PER_NODE,
    per_address: int = MAX_OUTSTANDING_PER_ADDRESS,
) -> ChallengeRefused | None:
    """Whether a node may get one more challenge for `address`, given its live
    unanswered ones as (address key, seconds left). At a cap the caller waits
    until the oldest of them expires. Both stores decide with this."""
    mine = [left for a, left in live if a == address]
    if len(mine) >= per_address:
        return ChallengeRefused(
            f"{len(mine)} challenges for this node from {address} are still unanswered; "
            f"answer one, or ask again in {max(1, math.ceil(min(mine)))} seconds.",
            min(mine),
        )
    if len(live) >= per_node:
        oldest = min(left for _, left in live)
        return ChallengeRefused(
            f"This node has {len(live)} unanswered challenges, the most it may have; "
            f"ask again in {max(1, math.ceil(oldest))} seconds.",
            oldest,
        )
    return None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- resume tokens: in the database for either store -----------------------------


@dataclass(frozen=True)
class ResumeGrant:
    """A resume token to hand out, and its row to write in the caller's
    transaction (the connect record's, so a link costs no write of its own)."""

    node_id: str
    token: str
    revoke_others: bool
    now: dt.datetime
    expires: dt.datetime

    def write(self, s: Session) -> None:
        if self.revoke_others:
            s.execute(delete(ResumeToken).where(ResumeToken.node_id == self.node_id))
        s.execute(
            insert(ResumeToken).values(
                token_hash=auth.hash_token(self.token),
                node_id=self.node_id,
                created_at=self.now,
                expires_at=self.expires,
            )
        )


@dataclass(frozen=True)
class _Consume:
    node_id: str
    token_hash: str
    now: dt.datetime


def _apply_consume(s: Session, item: _Consume) -> bool:
    # One statement: of concurrent uses of a token, on any process, one wins.
    return (
        s.scalar(
            update(ResumeToken)
            .where(
                ResumeToken.token_hash == item.token_hash,
                ResumeToken.node_id == item.node_id,
                ResumeToken.consumed_at.is_(None),
                ResumeToken.expires_at > item.now,
            )
            .values(consumed_at=item.now)
            .returning(ResumeToken.node_id)
        )
        is not None
    )


def _apply_consume_many(s: Session, items: list[_Consume]) -> list[bool]:
    """A batch of `_apply_consume` in one UPDATE ... RETURNING per 500: the
    same conditions (hash and node together, unused, unexpired), and still
    one statement per row, so of concurrent uses on any process one wins. A
    token presented twice in one batch wins for its first presentation only."""
    now = max(c.now for c in items)
    won: set[tuple[str, str]] = set()
    for i in range(0, len(items), 500):
        pairs = sorted({(c.token_hash, c.node_id) for c in items[i : i + 500]})
        rows = s.execute(
            update(ResumeToken)
            .where(
                tuple_(ResumeToken.token_hash, ResumeToken.node_id).in_(pairs),
                ResumeToken.consumed_at.is_(None),
                ResumeToken.expires_at > now,
            )
            .values(consumed_at=now)
            .returning(ResumeToken.token_hash, ResumeToken.node_id)
            .execution_options(synchronize_session=False)
        ).all()
        won.update((h, n) for h, n in rows)
    results = []
    for c in items:
        results.append((c.token_hash, c.node_id) in won)
        won.discard((c.token_hash, c.node_id))
    return results


def db_issue_resume_tokens(
    db: Database, tokens: dict[str, str], now: dt.datetime, ttl: float
) -> None:
    """node id -> token hash: every earlier token of these nodes replaced, one transaction."""
    ids = sorted(tokens)
    expires = now + dt.timedelta(seconds=ttl)
    with db.session(write_lock=True) as s:
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            s.execute(delete(ResumeToken).where(ResumeToken.node_id.in_(chunk)))
            s.execute(
                insert(ResumeToken),
                [
                    {
                        "token_hash": tokens[n],
                        "node_id": n,
                        "created_at": now,
                        "expires_at": expires,
                    }
                    for n in chunk
                ],
            )


class ResumeTokens:
    """Resume tokens (docs/protocol.md, resume): rows, in both stores, because
    their point is to outlive the Cloud process that issued them. Issued and
    consumed through group commits, so a storm of reconnects shares a few
    transactions. Wall-clock expiry (aware UTC), compared across processes."""

    def __init__(self, db: Database, ttl: float, now: Callable[[], dt.datetime] = utcnow) -> None:
        self.db = db
        self.ttl = ttl
        self.now = now
        self._consume = GroupCommit(
            db, _apply_consume, key=lambda c: c.node_id, apply_many=_apply_consume_many
        )

    def grant(self, node_id: str, revoke_others: bool) -> ResumeGrant:
        now = self.now()
        expires = now + dt.timedelta(seconds=self.ttl)
        return ResumeGrant(node_id, auth.make_link_token(), revoke_others, now, expires)

    async def issue_many(self, node_ids: list[str]) -> dict[str, str]:
        tokens = {n: auth.make_link_token() for n in node_ids}
        hashes = {n: auth.hash_token(t) for n, t in tokens.items()}
        await run_in_threadpool(db_issue_resume_tokens, self.db, hashes, self.now(), self.ttl)
        return tokens

    async def consume(self, node_id: str, token: str) -> bool:
        return await self._consume.submit(_Consume(node_id, auth.hash_token(token), self.now()))

    def purge(self) -> None:
        with self.db.session(write_lock=True) as s:
            s.execute(delete(ResumeToken).where(ResumeToken.expires_at < self.now()))


# -- one process: in memory ------------------------------------------------------


@dataclass
class _Challenge:
    digest: str  # SHA-256 of the plaintext, hex
    address: str  # limits.address_key of who asked
    expires: float  # clock seconds


class OneTimeSecrets:
    """The dictionaries of `MemorySecretStore`: outstanding challenges and link
    tokens by hash.

    Use from the event loop only (no locks: nothing awaits between a check and
    its change). Bounded per node by `outstanding_refusal`; a challenge leaves
    when answered (right or wrong) or expired, never to make room."""

    def __init__(
        self,
        clock: limits.Clock = time.monotonic,
        per_node: int = MAX_OUTSTANDING_PER_NODE,
        per_address: int = MAX_OUTSTANDING_PER_ADDRESS,
    ) -> None:
        self.clock = clock
        self.per_node = per_node
        self.per_address = per_address
        # node id -> challenge id -> challenge
        self._challenges: dict[str, dict[str, _Challenge]] = {}
        # link token hash -> (node id, expires at)
        self._tokens: dict[str, tuple[str, float]] = {}

    def add_challenge(self, node_id: str, address: str, challenge: bytes, ttl: float) -> str:
        """Hold `challenge` for the node; its id. Raises ChallengeRefused at a cap."""
        now = self.clock()
        per_node = self._challenges.setdefault(node_id, {})
        for cid in [c for c, ch in per_node.items() if ch.expires <= now]:
            del per_node[cid]
        live = [(ch.address, ch.expires - now) for ch in per_node.values()]
        refused = outstanding_refusal(live, address, self.per_node, self.per_address)
        if refused is not None:
            if not per_node:
                del self._challenges[node_id]
            raise refused
        cid = secrets.token_urlsafe(18)
        per_node[cid] = _Challenge(_sha256(challenge), address, now + ttl)
        return cid

    def drop_challenge(self, node_id: str, challenge_id: str) -> None:
        per_node = self._challenges.get(node_id)
        if per_node is not None:
            per_node.pop(challenge_id, None)
            if not per_node:
                del self._challenges[node_id]

    def consume_challenge(self, node_id: str, challenge_id: str | None, answer: bytes) -> Outcome:
        """What the answer to a challenge of `node_id` is (see `Answered`)."""
        per_node = self._challenges.get(node_id)
        if per_node is None:
            return "expired"
        digest = _sha256(answer)
        if challenge_id is None:  # an older agent: find it by its plaintext
            challenge_id = next((c for c, ch in per_node.items() if ch.digest == digest), None)
            if challenge_id is None:
                return "expired"
        entry = per_node.pop(challenge_id, None)
        if not per_node:
            del self._challenges[node_id]
        if entry is None or entry.expires <= self.clock():
            return "expired"
        if not auth.responses_match(entry.digest.encode(), digest.encode()):
            return "wrong"
        return "ok"

    def issue_token(self, node_id: str) -> str:
        token = auth.make_link_token()
        self._tokens[auth.hash_token(token)] = (node_id, self.clock() + LINK_TOKEN_TTL_SECONDS)
        return token

    def consume_token(self, token: str) -> str | None:
        """The node id of a valid, unused link token, now used; else None."""
        entry = self._tokens.pop(auth.hash_token(token), None)
        if entry is None or entry[1] <= self.clock():
            return None
        return entry[0]

    def forget_node(self, node_id: str) -> None:
        self._challenges.pop(node_id, None)
        for key in [k for k, (nid, _) in self._tokens.items() if nid == node_id]:
            del self._tokens[key]

    def purge(self) -> None:
        now = self.clock()
        for node_id in list(self._challenges):
            per_node = self._challenges[node_id]
            for cid in [c for c, ch in per_node.items() if ch.expires <= now]:
                del per_node[cid]
            if not per_node:
                del self._challenges[node_id]
        for key in [k for k, (_, exp) in self._tokens.items() if exp <= now]:
            del self._tokens[key]


def seal_challenge(s: Session, node_id: str) -> bytes | None:
    """The node's registered public key (PEM), None for an unknown node.
    Read-only; run in batches (tether.cloud.batching), so a storm of
    challenges shares a few pooled connections instead of one each."""
    public_key_pem = s.scalar(select(Node.public_key_pem).where(Node.id == node_id))
    # "": a child (tether.cloud.children) has no key: only its parent links.
    return public_key_pem.encode() if public_key_pem else None


class _ResumeTokensOf:
    """Resume tokens are rows in both stores: both hand them to `ResumeTokens`."""

    resume: ResumeTokens

    def resume_grant(self, node_id: str, revoke_others: bool) -> ResumeGrant:
        return self.resume.grant(node_id, revoke_others)

    async def issue_resume_tokens(self, node_ids: list[str]) -> dict[str, str]:
        return await self.resume.issue_many(node_ids)

    async def consume_resume_token(self, node_id: str, token: str) -> bool:
        return await self.resume.consume(node_id, token)


class MemorySecretStore(_ResumeTokensOf):
    """The secrets of a single-process Cloud, in memory (`OneTimeSecrets`)."""

    def __init__(
        self,
        db: Database,
        clock: limits.Clock = time.monotonic,
        per_node: int = MAX_OUTSTANDING_PER_NODE,
        per_address: int = MAX_OUTSTANDING_PER_ADDRESS,
        resume: ResumeTokens | None = None,
    ) -> None:
        self.book = OneTimeSecrets(clock, per_node, per_address)
        self.resume = resume or ResumeTokens(db, 600.0)
        # The node's key, read in batches shared by concurrent challenges.
        self._keys = GroupCommit(db, seal_challenge, key=str, write=False)

    async def issue_challenge(self, node_id: str, address: str, ttl: float) -> tuple[str, bytes]:
        challenge = auth.make_challenge()
        # Held before the key is read (an await), so concurrent askers count.
        cid = self.book.add_challenge(node_id, address, challenge, ttl)
        try:
            public_key_pem = await self._keys.submit(node_id)
            if public_key_pem is None:
                raise UnknownNode(node_id)
            return cid, auth.encrypt_challenge(public_key_pem, challenge)
        except BaseException:  # unknown node, unusable key, database down, cancelled
            self.book.drop_challenge(node_id, cid)
            raise

    async def answer_challenge(
        self, node_id: str, challenge_id: str | None, answer: bytes
    ) -> Answered:
        outcome = self.book.consume_challenge(node_id, challenge_id, answer)
        if outcome != "ok":
            return Answered(outcome)
        return Answered("ok", self.book.issue_token(node_id))

    async def consume_link_token(self, token: str) -> str | None:
        return self.book.consume_token(token)

    async def forget_node(self, node_id: str) -> None:
        self.book.forget_node(node_id)

    async def purge_expired(self) -> None:
        self.book.purge()
        await run_in_threadpool(self.resume.purge)


# -- several processes: in the database (run in a thread) ------------------------------


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)  # SQLite: naive UTC


def db_issue_challenge(
    db: Database, node_id: str, ttl: float, address: str, now: dt.datetime
) -> tuple[str, bytes]:
    """Store a new challenge for the node: (its id, it encrypted to the node's key)."""
    challenge = auth.make_challenge()
    with db.session(write_lock=True) as s:
        # The node's row lock: processes sharing PostgreSQL count and add its
        # challenges one at a time, so the caps hold across processes.
        public_key_pem = s.scalar(
            select(Node.public_key_pem).where(Node.id == node_id).with_for_update()
        )
        if not public_key_pem:  # "": a child, which never authenticates itself
            raise UnknownNode(node_id)
        rows = s.execute(
            select(NodeChallenge.address, NodeChallenge.expires_at).where(
                NodeChallenge.node_id == node_id,
                NodeChallenge.consumed_at.is_(None),
                NodeChallenge.expires_at > now,
            )
        ).all()
        live = [(a or "", (_aware(exp) - now).total_seconds()) for a, exp in rows]
        refused = outstanding_refusal(live, address)
        if refused is not None:
            raise refused
        row = NodeChallenge(
            id=new_id(),
            node_id=node_id,
            challenge_hash=_sha256(challenge),
            created_at=now,
            expires_at=now + dt.timedelta(seconds=ttl),
            address=address[:64],
        )
        s.add(row)
        return row.id, auth.encrypt_challenge(public_key_pem.encode(), challenge)


def db_answer_challenge(
    db: Database, node_id: str, challenge_id: str | None, answer: bytes, now: dt.datetime
) -> Answered:
    """Consume the challenge answered; a right answer's link token is stored in
    the same transaction."""
    answer_hash = _sha256(answer)
    live = (
        NodeChallenge.node_id == node_id,
        NodeChallenge.consumed_at.is_(None),
        NodeChallenge.expires_at > now,
    )
    with db.session(write_lock=True) as s:
        # One statement each: of concurrent answers, on any process, one wins.
        if challenge_id is None:  # an older agent: find it by its plaintext
            stmt = update(NodeChallenge).where(*live, NodeChallenge.challenge_hash == answer_hash)
        else:
            stmt = update(NodeChallenge).where(*live, NodeChallenge.id == challenge_id)
        expected = s.scalar(stmt.values(consumed_at=now).returning(NodeChallenge.challenge_hash))
        if expected is None:
            return Answered("expired")
        if not auth.responses_match(expected.encode(), answer_hash.encode()):
            return Answered("wrong")  # committed: a wrong answer uses up the challenge too
        token = auth.make_link_token()
        s.add(
            LinkToken(
                token_hash=auth.hash_token(token),
                node_id=node_id,
                created_at=now,
                expires_at=now + dt.timedelta(seconds=LINK_TOKEN_TTL_SECONDS),
            )
        )
        return Answered("ok", token)


def consume_link_token(db: Database, token: str, now: dt.datetime | None = None) -> str | None:
    """The node id of a valid, unused link token, now used; else None."""
    now = now or utcnow()
    token_hash = auth.hash_token(token)
    with db.session(write_lock=True) as s:
        # One statement: of concurrent uses of a token, only one gets its row.
        return s.scalar(
            update(LinkToken)
            .where(
                LinkToken.token_hash == token_hash,
                LinkToken.consumed_at.is_(None),
                LinkToken.expires_at > now,
            )
            .values(consumed_at=now)
            .returning(LinkToken.node_id)
        )


def purge_expired(db: Database, now: dt.datetime | None = None) -> None:
    """Delete expired challenge and link token rows."""
    now = now or utcnow()
    with db.session(write_lock=True) as s:
        s.execute(delete(NodeChallenge).where(NodeChallenge.expires_at < now))
        s.execute(delete(LinkToken).where(LinkToken.expires_at < now))


class DatabaseSecretStore(_ResumeTokensOf):
    """The secrets of Cloud processes sharing the database, as rows."""

    def __init__(
        self,
        db: Database,
        now: Callable[[], dt.datetime] = utcnow,
        resume: ResumeTokens | None = None,
    ) -> None:
        self.db = db
        self.now = now  # wall clock, aware UTC: rows are compared across processes
        self.resume = resume or ResumeTokens(db, 600.0, now)

    async def issue_challenge(self, node_id: str, address: str, ttl: float) -> tuple[str, bytes]:
        return await run_in_threadpool(
            db_issue_challenge, self.db, node_id, ttl, address, self.now()
        )

    async def answer_challenge(
        self, node_id: str, challenge_id: str | None, answer: bytes
    ) -> Answered:
        return await run_in_threadpool(
            db_answer_challenge, self.db, node_id, challenge_id, answer, self.now()
        )

    async def consume_link_token(self, token: str) -> str | None:
        return await run_in_threadpool(consume_link_token, self.db, token, self.now())

    async def forget_node(self, node_id: str) -> None:
        return None  # the node's rows went with it (ON DELETE CASCADE)

    async def purge_expired(self) -> None:
        await run_in_threadpool(purge_expired, self.db, self.now())
        await run_in_threadpool(self.resume.purge)
