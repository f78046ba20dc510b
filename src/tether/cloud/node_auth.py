"""Node authentication: the challenge and password endpoints (docs/protocol.md §1).

    GET  /api/v1/auth/node/{claim_id}/challenge -> {"challenge", "expiresIn"}
    POST /api/v1/auth/node/{claim_id}/password  -> {"linkToken", "linkUrl", ...}

The challenge is 32 random bytes encrypted to the node's registered public key
(RSA-OAEP-SHA256). Only its SHA-256 is kept, bound to the node, with an expiry
under a minute; an answer consumes it once. The winner gets a one-time link
token (again only its hash is kept) for one `/aclk` connection.

Where those hashes live depends on how many Cloud processes serve the nodes:

- one process (no NATS, the default): in memory (`OneTimeSecrets`), touched only
  from the event loop, so consuming is a dictionary pop and single use needs no
  lock. A link setup then costs one database read (the node's public key) and
  the link's own presence write, instead of four write transactions serialised
  through SQLite's write lock. A restart forgets them: agents authenticate again
  after a restart anyway.
- several processes (NATS): in the database, consumed with one conditional
  UPDATE (checked by rowcount, or RETURNING), so of several concurrent answers
  on any number of processes exactly one wins.

Failures are logged with the node id and address, never the challenge, the
answer or the token, and rate limited per node and per address.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass

import msgspec
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tether.cloud.body import read_limited
from tether.cloud.claim import client_address
from tether.cloud.db import Database
from tether.cloud.errors import error_response
from tether.cloud.models import LinkToken, Node, NodeChallenge, utcnow
from tether.cloud.settings import CloudSettings
from tether.protocol import auth

log = logging.getLogger("tether.cloud.node_auth")

LINK_TOKEN_TTL_SECONDS = 60.0
# Keep used and expired challenges this long so a replay is told apart from a
# wrong answer (401 vs 403), then forget them.
CHALLENGE_RETENTION = dt.timedelta(minutes=10)
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)(:[0-9]{1,5})?$")


class NodeAuthError(Exception):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message
        self.status = auth.AUTH_ERRORS[key].status


def _not_found(node_id: str) -> NodeAuthError:
    return NodeAuthError(
        "ErrNodeNotFound",
        f"This Cloud does not know node {node_id[:40]}: it was never claimed here or was "
        f"removed. Fix: {auth.REMOVED_FIX}",
    )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class AuthLimiter:
    """Failed attempts per node and per address (4x the node budget: NAT)."""

    def __init__(self, per_minute: int) -> None:
        self.nodes = auth.FailureLimiter(max(1, per_minute), 60.0, 60.0)
        self.addresses = auth.FailureLimiter(max(1, per_minute) * 4, 60.0, 60.0)

    def retry_after(self, node_id: str, address: str) -> float | None:
        now = time.monotonic()
        waits = [
            w
            for w in (
                self.nodes.retry_after(node_id, now),
                self.addresses.retry_after(address, now),
            )
            if w
        ]
        return max(waits) if waits else None

    def failed(self, node_id: str, address: str) -> None:
        now = time.monotonic()
        self.nodes.record_failure(node_id, now)
        self.addresses.record_failure(address, now)

    def succeeded(self, node_id: str) -> None:
        self.nodes.record_success(node_id)


# -- one process: in memory ------------------------------------------------------


class OneTimeSecrets:
    """Outstanding challenges and link tokens of a single-process Cloud, by hash.

    Use from the event loop only (no locks: nothing awaits between a check and
    its pop). Bounded: at most MAX_CHALLENGES_PER_NODE per node (the oldest go
    first), and only nodes with a registered key get any."""

    MAX_CHALLENGES_PER_NODE = 8

    def __init__(self) -> None:
        # node id -> challenge hash -> (expires at, consumed); monotonic seconds.
        self._challenges: dict[str, OrderedDict[str, tuple[float, bool]]] = {}
        # link token hash -> (node id, expires at)
        self._tokens: dict[str, tuple[str, float]] = {}

    def add_challenge(self, node_id: str, challenge: bytes, ttl: float) -> None:
        per_node = self._challenges.setdefault(node_id, OrderedDict())
        per_node[_sha256(challenge)] = (time.monotonic() + ttl, False)
        while len(per_node) > self.MAX_CHALLENGES_PER_NODE:
            per_node.popitem(last=False)

    def consume_challenge(self, node_id: str, answer: bytes) -> str:
        """Outcome: "ok" (now used), "used" (expired or used before) or "unknown"."""
        per_node = self._challenges.get(node_id)
        key = _sha256(answer)
        entry = per_node.get(key) if per_node else None
        if per_node is None or entry is None:
            return "unknown"
        expires, consumed = entry
        if consumed or expires <= time.monotonic():
            return "used"
        # Kept (marked used) so a replay is told apart from a wrong answer.
        per_node[key] = (expires, True)
        return "ok"

    def issue_token(self, node_id: str) -> str:
        token = auth.make_link_token()
        self._tokens[auth.hash_token(token)] = (node_id, time.monotonic() + LINK_TOKEN_TTL_SECONDS)
        return token

    def consume_token(self, token: str) -> str | None:
        """The node id of a valid, unused link token, now used; else None."""
        entry = self._tokens.pop(auth.hash_token(token), None)
        if entry is None or entry[1] <= time.monotonic():
            return None
        return entry[0]

    def forget_node(self, node_id: str) -> None:
        """A removed node's outstanding challenges and tokens stop working."""
        self._challenges.pop(node_id, None)
        for key in [k for k, (nid, _) in self._tokens.items() if nid == node_id]:
            del self._tokens[key]

    def purge(self) -> None:
        now = time.monotonic()
        keep = CHALLENGE_RETENTION.total_seconds()
        for node_id in list(self._challenges):
            per_node = self._challenges[node_id]
            for key in [k for k, (exp, _) in per_node.items() if exp + keep < now]:
                del per_node[key]
            if not per_node:
                del self._challenges[node_id]
        for key in [k for k, (_, exp) in self._tokens.items() if exp <= now]:
            del self._tokens[key]


# -- database work (run in a thread) ----------------------------------------------


def seal_challenge(s: Session, node_id: str) -> tuple[bytes, bytes] | None:
    """(challenge, challenge encrypted to the node's key), None for an unknown
    node. Read-only; run in batches (tether.cloud.batching), so a storm of
    challenges shares a few pooled connections instead of one each."""
    public_key_pem = s.scalar(select(Node.public_key_pem).where(Node.id == node_id))
    if public_key_pem is None:
        return None
    challenge = auth.make_challenge()
    return challenge, auth.encrypt_challenge(public_key_pem.encode(), challenge)


def wrong_answer(db: Database, node_id: str) -> NodeAuthError:
    """The error for an answer that matches no challenge of the node."""
    with db.session() as s:
        if s.scalar(select(Node.id).where(Node.id == node_id)) is None:
            return _not_found(node_id)
    return _incorrect_response()


def _incorrect_response() -> NodeAuthError:
    return NodeAuthError(
        "ErrIncorrectResponse",
        "The answer does not match any challenge issued to this node: the node's "
        "private key is not the key it was claimed with. Fix: "
        + auth.AUTH_ERRORS["ErrIncorrectResponse"].fix,
    )


def _challenge_used() -> NodeAuthError:
    return NodeAuthError(
        "ErrChallengeExpired", "The challenge expired or was already used; ask for a new one."
    )


def issue_challenge(db: Database, node_id: str, ttl: float, address: str) -> bytes:
    """Store a new challenge for the node; return it encrypted to the node's key."""
    now = utcnow()
    challenge = auth.make_challenge()
    with db.session(write_lock=True) as s:
        public_key_pem = s.scalar(select(Node.public_key_pem).where(Node.id == node_id))
        if public_key_pem is None:
            raise _not_found(node_id)
        s.add(
            NodeChallenge(
                node_id=node_id,
                challenge_hash=_sha256(challenge),
                created_at=now,
                expires_at=now + dt.timedelta(seconds=ttl),
                address=address[:64],
            )
        )
        return auth.encrypt_challenge(public_key_pem.encode(), challenge)


def answer_challenge(db: Database, node_id: str, answer: bytes) -> str:
    """Consume the challenge `answer` decrypts to; return a new link token."""
    now = utcnow()
    answer_hash = _sha256(answer)
    with db.session(write_lock=True) as s:
        consumed = s.execute(
            update(NodeChallenge)
            .where(
                NodeChallenge.node_id == node_id,
                NodeChallenge.challenge_hash == answer_hash,
                NodeChallenge.consumed_at.is_(None),
                NodeChallenge.expires_at > now,
            )
            .values(consumed_at=now)
        )
        if getattr(consumed, "rowcount", 0) != 1:
            if s.scalar(select(Node.id).where(Node.id == node_id)) is None:
                raise _not_found(node_id)
            known = s.scalar(
                select(NodeChallenge.id).where(
                    NodeChallenge.node_id == node_id, NodeChallenge.challenge_hash == answer_hash
                )
            )
            if known is not None:
                raise _challenge_used()
            raise _incorrect_response()
        token = auth.make_link_token()
        s.add(
            LinkToken(
                token_hash=auth.hash_token(token),
                node_id=node_id,
                created_at=now,
                expires_at=now + dt.timedelta(seconds=LINK_TOKEN_TTL_SECONDS),
            )
        )
        return token


def purge_expired(db: Database) -> None:
    """Forget old challenges and link tokens (run by the link sweeper)."""
    now = utcnow()
    with db.session(write_lock=True) as s:
        s.execute(delete(NodeChallenge).where(NodeChallenge.expires_at < now - CHALLENGE_RETENTION))
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
    address: str


def link_url(request: Request, settings: CloudSettings) -> str:
    """`wss://<the host the agent used>/aclk`, or from --public-url."""
    if settings.public_url:
        base = settings.url
    else:
        host = request.headers.get("host", "")
        base = f"{settings.scheme}://{host}" if _HOST.match(host) else settings.url
    scheme, _, rest = base.partition("://")
    return f"{'ws' if scheme == 'http' else 'wss'}://{rest.rstrip('/')}{auth.LINK_PATH}"


def _error(exc: NodeAuthError, call: _Call, what: str) -> Response:
    log.warning(
        "node auth %s refused for node %s from %s: %s",
        what,
        call.node_id[:40],
        call.address,
        exc.key,
    )
    return error_response(exc.status, exc.key, exc.message)


def _start(request: Request) -> tuple[_Call, Response | None]:
    call = _Call(str(request.path_params["claim_id"]).lower()[:64], client_address(request))
    limiter: AuthLimiter = request.app.state.auth_limiter
    wait = limiter.retry_after(call.node_id, call.address)
    if wait:
        seconds = max(1, int(wait + 0.999))
        log.warning(
            "node auth for node %s from %s rate limited for %d s",
            call.node_id[:40],
            call.address,
            seconds,
        )
        return call, error_response(
            429,
            "ErrRateLimited",
            f"Too many failed authentication attempts for this node or address; "
            f"try again in {seconds} seconds.",
            headers={"Retry-After": str(seconds)},
        )
    return call, None


def one_time_secrets(request: Request) -> OneTimeSecrets | None:
    """The in-memory store of a single-process Cloud; None when several share
    the database (then challenges and tokens are rows)."""
    memory: OneTimeSecrets | None = request.app.state.links.secrets
    return memory


async def _answer_in_memory(
    memory: OneTimeSecrets, db: Database, node_id: str, answer: bytes
) -> str:
    outcome = memory.consume_challenge(node_id, answer)
    if outcome == "ok":
        return memory.issue_token(node_id)
    if outcome == "used":
        raise _challenge_used()
    raise await run_in_threadpool(wrong_answer, db, node_id)


async def challenge(request: Request) -> Response:
    """A fresh challenge encrypted to the node's key (single use, expires < 60 s)."""
    call, refused = _start(request)
    if refused is not None:
        return refused
    settings: CloudSettings = request.app.state.settings
    ttl = min(59.0, settings.challenge_ttl_seconds)
    memory = one_time_secrets(request)
    try:
        if memory is not None:
            issued = await request.app.state.links.seals.submit(call.node_id)
            if issued is None:
                raise _not_found(call.node_id)
            challenge_bytes, sealed = issued
            memory.add_challenge(call.node_id, challenge_bytes, ttl)
        else:
            sealed = await run_in_threadpool(
                issue_challenge, request.app.state.db, call.node_id, ttl, call.address
            )
    except NodeAuthError as exc:
        request.app.state.auth_limiter.failed(call.node_id, call.address)
        return _error(exc, call, "challenge")
    body = auth.ChallengeReply(challenge=auth.b64encode(sealed), expires_in=int(ttl))
    return Response(msgspec.json.encode(body), media_type="application/json")


async def password(request: Request) -> Response:
    """Check the decrypted challenge; answer a one-time link token and the link URL."""
    call, refused = _start(request)
    if refused is not None:
        return refused
    limiter: AuthLimiter = request.app.state.auth_limiter
    settings: CloudSettings = request.app.state.settings
    try:
        req = msgspec.json.decode(await read_limited(request, 8192), type=auth.PasswordRequest)
        answer = auth.b64decode(req.response)
    except (msgspec.MsgspecError, auth.AuthError) as exc:
        limiter.failed(call.node_id, call.address)
        log.warning(
            "node auth answer from %s for node %s is malformed", call.address, call.node_id[:40]
        )
        return error_response(
            400, "ErrBadRequest", f'Send JSON {{"response": "<base64>"}} ({exc}).'
        )
    memory = one_time_secrets(request)
    try:
        if memory is not None:
            token = await _answer_in_memory(memory, request.app.state.db, call.node_id, answer)
        else:
            token = await run_in_threadpool(
                answer_challenge, request.app.state.db, call.node_id, answer
            )
    except NodeAuthError as exc:
        limiter.failed(call.node_id, call.address)
        return _error(exc, call, "answer")
    limiter.succeeded(call.node_id)
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
