"""Node authentication: the challenge and password endpoints (docs/protocol.md §1).

    GET  /api/v1/auth/node/{claim_id}/challenge -> {"challenge", "expiresIn", "challengeId"}
    POST /api/v1/auth/node/{claim_id}/password  {"response", "challengeId"}
                                                -> {"linkToken", "linkUrl", ...}

The challenge is 32 random bytes encrypted to the node's registered public key
(RSA-OAEP-SHA256). Only its SHA-256 is kept, bound to the node and to the
address that asked, with an expiry under a minute, under an id the asker gets.
An answer names that id and consumes the challenge once, right or wrong: a
live challenge answered wrong is a wrong key (403, the agent stops); an id the
Cloud does not hold (expired, used, never issued, forgotten by a restart) is
401 (the agent asks again). The winner gets a one-time link token (again only
its hash is kept) for one `/aclk` connection.

Anyone may ask for a challenge, so issuing never evicts one that somebody may
still be answering: a node holds at most MAX_OUTSTANDING_PER_NODE unanswered
challenges, at most MAX_OUTSTANDING_PER_ADDRESS of them for one address
(IPv6 per /64); past that the asker gets 429 with Retry-After. A flood from
one address thus holds 2 of the node's 32 slots and the node's own attempt
still gets one. `AuthLimits` adds the per-address request budget and the
failure budgets per (node, address).

Where those hashes live depends on how many Cloud processes serve the nodes:

- one process (no NATS, the default): in memory (`OneTimeSecrets`), touched only
  from the event loop, so consuming is a dictionary pop and single use needs no
  lock. A link setup then costs one database read (the node's public key) and
  the link's own presence write, instead of four write transactions serialised
  through SQLite's write lock. A restart forgets them: agents authenticate again
  after a restart anyway.
- several processes (NATS): in the database, counted under the node's row lock
  and consumed with one conditional UPDATE ... RETURNING, so of several
  concurrent answers on any number of processes exactly one wins.

Both apply the same rules (`outstanding_refusal`, the outcomes above).
Failures are logged with the node id and address, never the challenge, the
answer or the token, at most a few lines per node and address a minute.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import re
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import msgspec
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tether.cloud import limits
from tether.cloud.body import BadJson, check_depth, read_limited
from tether.cloud.claim import client_address
from tether.cloud.db import Database
from tether.cloud.errors import error_response
from tether.cloud.models import LinkToken, Node, NodeChallenge, new_id, utcnow
from tether.cloud.settings import CloudSettings

if TYPE_CHECKING:  # link.py imports this module
    from tether.cloud.link import LinkService
from tether.protocol import auth

log = logging.getLogger("tether.cloud.node_auth")

LINK_TOKEN_TTL_SECONDS = 60.0
# Unanswered challenges a node may hold, and of those one address (limits.address_key).
# The agent needs one for a few milliseconds per attempt; 2 lets it lose one
# answer (a dropped connection) without waiting. 32 means a flood needs 16
# addresses (IPv6 /64s) to fill a node's slots.
MAX_OUTSTANDING_PER_NODE = 32
MAX_OUTSTANDING_PER_ADDRESS = 2
# An address's failures across all nodes may be this many times one node's budget.
ADDRESS_FAILURES_FACTOR = 4
LOG_LINES_PER_ADDRESS_PER_MINUTE = 10
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)(:[0-9]{1,5})?$")


class NodeAuthError(Exception):
    def __init__(self, key: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.message = message
        self.status = auth.AUTH_ERRORS[key].status
        self.retry_after = retry_after


def _not_found(node_id: str) -> NodeAuthError:
    return NodeAuthError(
        "ErrNodeNotFound",
        f"This Cloud does not know node {node_id[:40]}: it was never claimed here or was "
        f"removed. Fix: {auth.REMOVED_FIX}",
    )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class AuthLimits:
    """Per-address and per-(node, address) budgets of node authentication.

    - every node-auth request of an address (IPv6 per /64), counted when it
      starts: `requests_per_address_per_minute`;
    - failures per (node, address): `failures_per_minute`; over it, that
      address gets no new challenges for that node until the oldest failure is
      a minute old. Per address across nodes 4x that (NAT); over it, that
      address gets no challenges at all for as long.
      Answers are always judged, so a correct answer wins, and failures from one
      address never refuse another address anything.

    Each Cloud process keeps its own book (in memory), so with N processes an
    address gets at most N times the budget."""

    def __init__(
        self,
        failures_per_minute: int,
        requests_per_address_per_minute: int,
        clock: limits.Clock = time.monotonic,
    ) -> None:
        self.requests = limits.Window(requests_per_address_per_minute, 60.0, clock)
        self.node_failures = limits.Window(failures_per_minute, 60.0, clock)
        self.address_failures = limits.Window(
            max(1, failures_per_minute) * ADDRESS_FAILURES_FACTOR, 60.0, clock
        )
        # Refusals logged per address: a flood from one address writes a few lines a minute.
        self.log = limits.LogLimiter(LOG_LINES_PER_ADDRESS_PER_MINUTE, 60.0, clock)

    def admit(self, address: str) -> NodeAuthError | None:
        """Count one request of `address`; the refusal when over its budget."""
        wait = self.requests.hit(address)
        if wait:
            return _rate_limited(
                f"Too many node authentication requests from {address}; "
                f"try again in {wait} seconds.",
                wait,
            )
        return None

    def may_challenge(self, node_id: str, address: str) -> NodeAuthError | None:
        """The refusal of a new challenge when `address` failed too often."""
        wait = max(
            self.node_failures.retry_after(f"{node_id} {address}"),
            self.address_failures.retry_after(address),
        )
        if wait:
            return _rate_limited(
                f"Too many failed authentications for this node from {address}; "
                f"try again in {wait} seconds.",
                wait,
            )
        return None

    def failed(self, node_id: str, address: str) -> None:
        self.node_failures.add(f"{node_id} {address}")
        self.address_failures.add(address)

    def succeeded(self, node_id: str, address: str) -> None:
        self.node_failures.forget(f"{node_id} {address}")


def _rate_limited(message: str, wait: float) -> NodeAuthError:
    return NodeAuthError("ErrRateLimited", message, retry_after=max(1, math.ceil(wait)))


def outstanding_refusal(
    live: list[tuple[str, float]],
    address: str,
    per_node: int = MAX_OUTSTANDING_PER_NODE,
    per_address: int = MAX_OUTSTANDING_PER_ADDRESS,
) -> NodeAuthError | None:
    """Whether a node may get one more challenge for `address`, given its live
    unanswered ones as (address key, seconds left). Nothing is evicted: at a
    cap the caller waits until the oldest of them expires (Retry-After). Both
    stores (memory and database) decide with this."""
    mine = [left for a, left in live if a == address]
    if len(mine) >= per_address:
        return _rate_limited(
            f"{len(mine)} challenges for this node from {address} are still unanswered; "
            f"answer one, or ask again in {max(1, math.ceil(min(mine)))} seconds.",
            min(mine),
        )
    if len(live) >= per_node:
        oldest = min(left for _, left in live)
        return _rate_limited(
            f"This node has {len(live)} unanswered challenges, the most it may have; "
            f"ask again in {max(1, math.ceil(oldest))} seconds.",
            oldest,
        )
    return None


# -- one process: in memory ------------------------------------------------------


@dataclass
class _Challenge:
    digest: str  # SHA-256 of the plaintext, hex
    address: str  # limits.address_key of who asked
    expires: float  # clock seconds


Outcome = Literal["ok", "expired", "wrong"]


class OneTimeSecrets:
    """Outstanding challenges and link tokens of a single-process Cloud, by hash.

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
        """Hold `challenge` for the node; its id. Raises NodeAuthError (429) at a cap."""
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
        """What the answer to a challenge of `node_id` is.

        "ok": the live challenge named (or, without an id, the one `answer`
        matches) is answered right; "wrong": the named live challenge is
        answered wrong; "expired": no such live challenge. Either way it is
        gone: a challenge is answered once."""
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
        """A removed node's outstanding challenges and tokens stop working."""
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


# -- database work (run in a thread) ----------------------------------------------


def seal_challenge(s: Session, node_id: str) -> bytes | None:
    """The node's registered public key (PEM), None for an unknown node.
    Read-only; run in batches (tether.cloud.batching), so a storm of
    challenges shares a few pooled connections instead of one each."""
    public_key_pem = s.scalar(select(Node.public_key_pem).where(Node.id == node_id))
    return None if public_key_pem is None else public_key_pem.encode()


def node_exists(db: Database, node_id: str) -> bool:
    with db.session() as s:
        return s.scalar(select(Node.id).where(Node.id == node_id)) is not None


def _incorrect_response() -> NodeAuthError:
    return NodeAuthError(
        "ErrIncorrectResponse",
        "The answer to a live challenge is wrong: the node's private key is not the key "
        "it was claimed with. Fix: " + auth.AUTH_ERRORS["ErrIncorrectResponse"].fix,
    )


def _challenge_expired() -> NodeAuthError:
    return NodeAuthError(
        "ErrChallengeExpired",
        "The challenge expired, was already answered, or is not known to this Cloud "
        "(for example after a restart); ask for a new one.",
    )


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)  # SQLite: naive UTC


def issue_challenge(db: Database, node_id: str, ttl: float, address: str) -> tuple[str, bytes]:
    """Store a new challenge for the node: (its id, it encrypted to the node's key)."""
    now = utcnow()
    challenge = auth.make_challenge()
    with db.session(write_lock=True) as s:
        # The node's row lock: processes sharing PostgreSQL count and add its
        # challenges one at a time, so the caps hold across processes.
        public_key_pem = s.scalar(
            select(Node.public_key_pem).where(Node.id == node_id).with_for_update()
        )
        if public_key_pem is None:
            raise _not_found(node_id)
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


def answer_challenge(db: Database, node_id: str, challenge_id: str | None, answer: bytes) -> str:
    """Consume the challenge answered (the same rules as OneTimeSecrets);
    return a new link token."""
    now = utcnow()
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
            if s.scalar(select(Node.id).where(Node.id == node_id)) is None:
                raise _not_found(node_id)
            raise _challenge_expired()
        right = auth.responses_match(expected.encode(), answer_hash.encode())
        token = auth.make_link_token()
        if right:
            s.add(
                LinkToken(
                    token_hash=auth.hash_token(token),
                    node_id=node_id,
                    created_at=now,
                    expires_at=now + dt.timedelta(seconds=LINK_TOKEN_TTL_SECONDS),
                )
            )
    # Raised after the commit: a wrong answer uses up the challenge too.
    if not right:
        raise _incorrect_response()
    return token


def purge_expired(db: Database) -> None:
    """Forget expired challenges and link tokens (run by the link sweeper)."""
    now = utcnow()
    with db.session(write_lock=True) as s:
        s.execute(delete(NodeChallenge).where(NodeChallenge.expires_at < now))
        s.execute(delete(LinkToken).where(LinkToken.expires_at < now))


def consume_link_token(db: Database, token: str) -> str | None:
    """The node id of a valid, unused link token, now used; else None."""
    now = utcnow()
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


# -- HTTP ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Call:
    node_id: str
    address: str  # as logged
    key: str  # as limited: limits.address_key(address)


def link_url(request: Request, settings: CloudSettings) -> str:
    """`wss://<the host the agent used>/aclk`, or from --public-url."""
    if settings.public_url:
        base = settings.url
    else:
        host = request.headers.get("host", "")
        base = f"{settings.scheme}://{host}" if _HOST.match(host) else settings.url
    scheme, _, rest = base.partition("://")
    return f"{'ws' if scheme == 'http' else 'wss'}://{rest.rstrip('/')}{auth.LINK_PATH}"


def _error(request: Request, exc: NodeAuthError, call: _Call, what: str) -> Response:
    limiter: AuthLimits = request.app.state.auth_limiter
    allowed, suppressed = limiter.log.allow(call.key)
    if allowed:
        log.warning(
            "node auth %s refused for node %s from %s: %s%s%s",
            what,
            call.node_id[:40],
            call.address,
            exc.key,
            f" (rate limited, retry after {exc.retry_after} s)" if exc.retry_after else "",
            f" ({suppressed} similar lines left out)" if suppressed else "",
        )
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
    return error_response(exc.status, exc.key, exc.message, headers=headers)


def _call(request: Request) -> _Call:
    address = client_address(request)
    node_id = str(request.path_params["claim_id"]).lower()[:64]
    return _Call(node_id, address, limits.address_key(address))


def one_time_secrets(request: Request) -> OneTimeSecrets | None:
    """The in-memory store of a single-process Cloud; None when several share
    the database (then challenges and tokens are rows)."""
    memory: OneTimeSecrets | None = request.app.state.links.secrets
    return memory


async def _challenge_in_memory(
    request: Request, memory: OneTimeSecrets, call: _Call, ttl: float
) -> tuple[str, bytes]:
    challenge_bytes = auth.make_challenge()
    # Held before the key is read (an await), so concurrent askers count.
    cid = memory.add_challenge(call.node_id, call.key, challenge_bytes, ttl)
    try:
        public_key_pem: bytes | None = await request.app.state.links.seals.submit(call.node_id)
        if public_key_pem is None:
            raise _not_found(call.node_id)
        return cid, auth.encrypt_challenge(public_key_pem, challenge_bytes)
    except BaseException:  # unknown node, unusable key, database down, cancelled
        memory.drop_challenge(call.node_id, cid)
        raise


async def challenge(request: Request) -> Response:
    """A fresh challenge encrypted to the node's key (single use, expires < 60 s)."""
    call = _call(request)
    limiter: AuthLimits = request.app.state.auth_limiter
    refused = limiter.admit(call.key) or limiter.may_challenge(call.node_id, call.key)
    if refused is not None:
        return _error(request, refused, call, "challenge")
    # A node closed over budget is refused here already, before any RSA work.
    links: LinkService = request.app.state.links
    over_budget = links.over_budget_refusal(call.node_id)
    if over_budget is not None:
        return over_budget[1]
    settings: CloudSettings = request.app.state.settings
    ttl = min(59.0, settings.challenge_ttl_seconds)
    memory = one_time_secrets(request)
    try:
        if memory is not None:
            cid, sealed = await _challenge_in_memory(request, memory, call, ttl)
        else:
            cid, sealed = await run_in_threadpool(
                issue_challenge, request.app.state.db, call.node_id, ttl, call.key
            )
    except NodeAuthError as exc:
        if exc.key != "ErrRateLimited":  # a cap is not the asker's failure
            limiter.failed(call.node_id, call.key)
        return _error(request, exc, call, "challenge")
    body = auth.ChallengeReply(
        challenge=auth.b64encode(sealed), expires_in=int(ttl), challenge_id=cid
    )
    return Response(msgspec.json.encode(body), media_type="application/json")


async def _answer_in_memory(
    memory: OneTimeSecrets, db: Database, node_id: str, challenge_id: str | None, answer: bytes
) -> str:
    outcome = memory.consume_challenge(node_id, challenge_id, answer)
    if outcome == "ok":
        return memory.issue_token(node_id)
    if outcome == "wrong":
        raise _incorrect_response()
    if not await run_in_threadpool(node_exists, db, node_id):
        raise _not_found(node_id)
    raise _challenge_expired()


async def password(request: Request) -> Response:
    """Check the decrypted challenge; answer a one-time link token and the link URL.

    Judged whatever the failure budgets say: a correct answer always wins."""
    call = _call(request)
    limiter: AuthLimits = request.app.state.auth_limiter
    refused = limiter.admit(call.key)
    if refused is not None:
        return _error(request, refused, call, "answer")
    settings: CloudSettings = request.app.state.settings
    try:
        raw = await read_limited(request, 8192)
        check_depth(raw)  # msgspec, like json, recurses per level
        req = msgspec.json.decode(raw, type=auth.PasswordRequest)
        answer = auth.b64decode(req.response)
    except (msgspec.MsgspecError, auth.AuthError, BadJson) as exc:
        limiter.failed(call.node_id, call.key)
        log.warning(
            "node auth answer from %s for node %s is malformed", call.address, call.node_id[:40]
        )
        return error_response(
            400,
            "ErrBadRequest",
            f'Send JSON {{"response": "<base64>", "challengeId": "<id>"}} ({exc}).',
        )
    memory = one_time_secrets(request)
    db: Database = request.app.state.db
    try:
        if memory is not None:
            token = await _answer_in_memory(memory, db, call.node_id, req.challenge_id, answer)
        else:
            token = await run_in_threadpool(
                answer_challenge, db, call.node_id, req.challenge_id, answer
            )
    except NodeAuthError as exc:
        limiter.failed(call.node_id, call.key)
        return _error(request, exc, call, "answer")
    limiter.succeeded(call.node_id, call.key)
    reply = auth.PasswordReply(
        link_token=token,
        link_url=link_url(request, settings),
        keepalive_seconds=settings.keepalive_seconds,
        backoff=auth.BackoffPolicy(
            base_seconds=settings.backoff_base_seconds, max_seconds=settings.backoff_max_seconds
        ),
    )
    # Debug only: the link's own "live" line follows at once, and a fleet
    # reconnecting should not pay for two log lines per node.
    log.debug("node %s authenticated from %s", call.node_id, call.address)
    return Response(msgspec.json.encode(reply), media_type="application/json")


def routes() -> list[Route]:
    return [
        Route("/api/v1/auth/node/{claim_id}/challenge", challenge, methods=["GET"]),
        Route("/api/v1/auth/node/{claim_id}/password", password, methods=["POST"]),
    ]
