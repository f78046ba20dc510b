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
still be answering: a node holds at most 32 unanswered
challenges, at most 2 of them for one address
(IPv6 per /64); past that the asker gets 429 with Retry-After. A flood from
one address thus holds 2 of the node's 32 slots and the node's own attempt
still gets one. `AuthLimits` adds the per-address request budget and the
failure budgets per (node, address).

The hashes live in the app's `SecretStore` (`app.state.secret_store`, see
tether.cloud.secret_store): in memory for one process, in the database when
several share it. This module only calls that interface and maps its answers
to HTTP. Failures are logged with the node id and address, never the
challenge, the answer or the token, at most a few lines per node and address a
minute.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass

import msgspec
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tether.cloud import limits
from tether.cloud.body import BadJson, check_depth, read_limited
from tether.cloud.client import client_address
from tether.cloud.db import Database
from tether.cloud.errors import error_response
from tether.cloud.link import LinkService
from tether.cloud.models import Node
from tether.cloud.secret_store import ChallengeRefused, SecretStore, UnknownNode
from tether.cloud.settings import CloudSettings
from tether.protocol import auth

log = logging.getLogger("tether.cloud.node_auth")

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

    In scale-out mode the failure budgets are counted once for all processes
    (tether.cloud.shared_limits); the request budget is per process, so with N
    processes an address gets at most N times that one.

    The handlers call the failure methods through `limits.run(self.blocking, ...)`:
    shared ones ask the database, never on the event loop."""

    def __init__(
        self,
        failures_per_minute: int,
        requests_per_address_per_minute: int,
        clock: limits.Clock = time.monotonic,
        windows: limits.WindowFactory | None = None,
    ) -> None:
        # The flood guard stays per process (tether.cloud.shared_limits says why);
        # the failure budgets are `windows`: shared by every process in scale-out.
        self.requests = limits.Window(requests_per_address_per_minute, 60.0, clock)
        make = windows or limits.in_memory(clock)
        self.node_failures = make("node-auth-node", failures_per_minute, 60.0)
        self.address_failures = make(
            "node-auth-address", max(1, failures_per_minute) * ADDRESS_FAILURES_FACTOR, 60.0
        )
        self.blocking = self.node_failures.blocking or self.address_failures.blocking
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


def node_exists(db: Database, node_id: str) -> bool:
    with db.session() as s:
        return s.scalar(select(Node.id).where(Node.id == node_id)) is not None


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


async def challenge(request: Request) -> Response:
    """A fresh challenge encrypted to the node's key (single use, expires < 60 s)."""
    call = _call(request)
    limiter: AuthLimits = request.app.state.auth_limiter
    refused = limiter.admit(call.key) or await limits.run(
        limiter.blocking, limiter.may_challenge, call.node_id, call.key
    )
    if refused is not None:
        return _error(request, refused, call, "challenge")
    # A node closed over budget is refused here already, before any RSA work.
    links: LinkService = request.app.state.links
    over_budget = links.over_budget_refusal(call.node_id)
    if over_budget is not None:
        return over_budget[1]
    settings: CloudSettings = request.app.state.settings
    ttl = min(59.0, settings.challenge_ttl_seconds)
    store: SecretStore = request.app.state.secret_store
    try:
        cid, sealed = await store.issue_challenge(call.node_id, call.key, ttl)
    except UnknownNode:
        await limits.run(limiter.blocking, limiter.failed, call.node_id, call.key)
        return _error(request, _not_found(call.node_id), call, "challenge")
    except ChallengeRefused as cap:  # a cap is not the asker's failure
        return _error(request, _rate_limited(cap.message, cap.retry_after), call, "challenge")
    body = auth.ChallengeReply(
        challenge=auth.b64encode(sealed), expires_in=int(ttl), challenge_id=cid
    )
    return Response(msgspec.json.encode(body), media_type="application/json")


async def _answer(
    store: SecretStore, db: Database, node_id: str, challenge_id: str | None, answer: bytes
) -> str:
    """The link token for a right answer; else the NodeAuthError to answer."""
    answered = await store.answer_challenge(node_id, challenge_id, answer)
    if answered.outcome == "ok":
        return answered.link_token
    if answered.outcome == "wrong":
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
        await limits.run(limiter.blocking, limiter.failed, call.node_id, call.key)
        log.warning(
            "node auth answer from %s for node %s is malformed", call.address, call.node_id[:40]
        )
        return error_response(
            400,
            "ErrBadRequest",
            f'Send JSON {{"response": "<base64>", "challengeId": "<id>"}} ({exc}).',
        )
    store: SecretStore = request.app.state.secret_store
    db: Database = request.app.state.db
    try:
        token = await _answer(store, db, call.node_id, req.challenge_id, answer)
    except NodeAuthError as exc:
        await limits.run(limiter.blocking, limiter.failed, call.node_id, call.key)
        return _error(request, exc, call, "answer")
    await limits.run(limiter.blocking, limiter.succeeded, call.node_id, call.key)
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
