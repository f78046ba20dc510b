"""Node authentication: the challenge and password endpoints (docs/protocol.md §1).

    GET  /api/v1/auth/node/{claim_id}/challenge -> {"challenge", "expiresIn"}
    POST /api/v1/auth/node/{claim_id}/password  -> {"linkToken", "linkUrl", ...}

The challenge is 32 random bytes encrypted to the node's registered public key
(RSA-OAEP-SHA256). The database keeps only its SHA-256, bound to the node, with
an expiry under a minute; an answer consumes it with one conditional UPDATE
(checked by rowcount), so of several concurrent answers, on any number of Cloud
processes sharing the database, exactly one wins. The winner gets a one-time
link token (again only its hash is stored) for one `/aclk` connection.

Failures are logged with the node id and address, never the challenge, the
answer or the token, and rate limited per node and per address.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import time
from dataclasses import dataclass

import msgspec
from sqlalchemy import delete, select, update
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


# -- database work (run in a thread) ----------------------------------------------


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
                raise NodeAuthError(
                    "ErrChallengeExpired",
                    "The challenge expired or was already used; ask for a new one.",
                )
            raise NodeAuthError(
                "ErrIncorrectResponse",
                "The answer does not match any challenge issued to this node: the node's "
                "private key is not the key it was claimed with. Fix: "
                + auth.AUTH_ERRORS["ErrIncorrectResponse"].fix,
            )
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


async def challenge(request: Request) -> Response:
    """A fresh challenge encrypted to the node's key (single use, expires < 60 s)."""
    call, refused = _start(request)
    if refused is not None:
        return refused
    settings: CloudSettings = request.app.state.settings
    ttl = min(59.0, settings.challenge_ttl_seconds)
    try:
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
    try:
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
