"""The relay: a signed-in user reads a node's own API through the Cloud.

    GET /api/v2/nodes/{node_id}/{info|charts|chart|data|alarms|alarm_log|allmetrics}?QUERY
    (also /api/v2/nodes/{node_id}/api/v1/{name}?QUERY, the agent's own path)

The caller must be a member of the node's Space (404 otherwise, 401 without
credentials). The query goes as a `QueryRequest` through the Router to the
Cloud process holding the node's link, and the agent's status, content type
and body come back. 503 when the node has no live link (with its state and
since when), 504 when it does not answer in time. Bodies pass through memory
only: never stored, never logged.

A node's answer is untrusted: it reaches the browser on the Cloud's own origin,
where a script in it could act with the user's session. So it keeps its
content type only if the agent API produces that type (JSON, CSV, plain text
such as the Prometheus exposition); anything else is sent as an
`application/octet-stream` download. A status outside 200-599 or a content type
with control characters is a 502. tether.cloud.headers adds the sandboxing CSP,
`nosniff` and `no-store` to every /api/ answer.

A zlib body is inflated piece by piece against a per-process budget of inflated
bytes in flight (past it: 503 `ErrRelayBusy`) and a cap per answer (past it:
502 `ErrAnswerTooLarge`), so a zip bomb is refused, never inflated whole.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tether.cloud import children
from tether.cloud.auth import Principal, auth_cache, require_user_with
from tether.cloud.db import Database
from tether.cloud.errors import error_response, not_found
from tether.cloud.limits import Budget, LogLimiter
from tether.cloud.models import Node
from tether.cloud.routing import NodeNotConnected, RelayTimeout, Router, RoutingError
from tether.cloud.secrets import iso
from tether.cloud.store import spaces as space_store
from tether.protocol.frames import (
    BodyTooLarge,
    ProtocolError,
    QueryRequest,
    QueryResponse,
    inflate_pieces,
)

log = logging.getLogger("tether.cloud.relay")

# The agent API paths a browser may read through the Cloud (docs/api.md).
RELAYED = frozenset({"info", "charts", "chart", "data", "alarms", "alarm_log", "allmetrics"})
MAX_QUERY = 2048

# The content types tether.agent.api answers with: JSON, CSV (data?format=csv)
# and plain text (the Prometheus exposition of allmetrics). None of them is
# active content; text/html, image/svg+xml, XML and the like would be.
SAFE_TYPES = frozenset({"application/json", "text/csv", "text/plain"})
DOWNLOAD = "application/octet-stream"
_CHARSETS = frozenset({"utf-8", "us-ascii"})
_VERSION = re.compile(r"[0-9][0-9.]{0,15}")  # Prometheus' version=0.0.4
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
BUSY_RETRY_AFTER = "1"
# Warnings about one node's answers: a few per minute, however often it is asked.
_warnings = LogLimiter(5, 60.0, time.monotonic)


class RelayBusy(Exception):
    """The process's budget of inflated bytes in flight is used up."""


def content_type_of(value: str) -> str:
    """What to send for a node's content type: the type itself if the agent API
    produces it (keeping only a UTF-8/ASCII charset and a numeric version), else
    `application/octet-stream`. Rebuilt from known parts, never passed through."""
    media, *params = value.split(";")
    media = media.strip().lower()
    if media not in SAFE_TYPES:
        return DOWNLOAD
    kept = [media]
    for param in params:
        name, _, v = param.partition("=")
        name, v = name.strip().lower(), v.strip().strip('"')
        if name == "charset" and v.lower() in _CHARSETS:
            kept.append(f"charset={v.lower()}")
        elif name == "version" and media == "text/plain" and _VERSION.fullmatch(v):
            kept.append(f"version={v}")
    return "; ".join(kept)


def refusal(answer: QueryResponse) -> str | None:
    """Why a node's answer cannot be relayed at all, or None."""
    if not 200 <= answer.status <= 599:
        return (
            f"The node answered with HTTP status {answer.status}, which is not a final "
            "status (200-599); the answer was dropped. The node's agent is broken or hostile."
        )
    if _CONTROL.search(answer.content_type):
        return (
            "The node answered with a content type containing control characters (such as "
            "CR or LF); the answer was dropped. The node's agent is broken or hostile."
        )
    return None


def relay_budget(app: Any) -> Budget:
    """The process's budget of inflated bytes in flight, made on first use."""
    budget: Budget | None = getattr(app.state, "relay_budget", None)
    if budget is None:
        budget = app.state.relay_budget = Budget(app.state.settings.relay_inflate_budget_bytes)
    return budget


async def inflate(answer: QueryResponse, cap: int, budget: Budget | None) -> list[bytes]:
    """The zlib body of `answer`, inflated in pieces, each taken from `budget`
    before the next is made (RelayBusy, all given back, when one does not fit).
    With `budget` None the pieces are only checked (size, integrity) and dropped.
    BodyTooLarge past `cap` bytes, ProtocolError for a corrupt body.

    On the event loop, yielding after each piece (256 KiB, well under a
    millisecond): a bomb costs up to `cap` bytes of inflating but never blocks
    the loop for long, and no worker thread allocates in its own malloc arena
    (which kept RSS far above the budget when pieces were made in threads)."""
    pieces: list[bytes] = []
    held = 0
    try:
        for piece in inflate_pieces(answer, cap):
            if budget is not None:
                if not budget.take(len(piece)):
                    raise RelayBusy
                held += len(piece)
                pieces.append(piece)
            await asyncio.sleep(0)
    except BaseException:
        pieces.clear()  # the traceback keeps this frame: free the bytes now
        if budget is not None:
            budget.give(held)
        raise
    return pieces


class InflatedResponse(Response):
    """An inflated answer, sent as the pieces it was inflated in (no copy to
    join them). Its bytes go back to the budget once sent, or the send failed."""

    def __init__(
        self,
        pieces: list[bytes],
        budget: Budget,
        status_code: int,
        headers: dict[str, str],
        media_type: str,
    ) -> None:
        self.pieces = pieces
        self.budget = budget
        self.size = sum(len(p) for p in pieces)
        super().__init__(b"", status_code, headers, media_type)
        self.headers["content-length"] = str(self.size)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            last = len(self.pieces) - 1
            for i, piece in enumerate(self.pieces):
                await send({"type": "http.response.body", "body": piece, "more_body": i < last})
            if not self.pieces:
                await send({"type": "http.response.body", "body": b""})
        finally:
            self.pieces = []
            self.budget.give(self.size)


def _warn(node_id: str, what: str) -> None:
    allowed, suppressed = _warnings.allow(node_id)
    if allowed:
        more = f" ({suppressed} more like it suppressed)" if suppressed else ""
        log.warning("relay to node %s: %s%s", node_id, what, more)


def _presence(db: Database, user_id: str, node_id: str) -> dict[str, Any] | None:
    """The node's presence if `user_id` is a member of its Space, else None."""
    with db.session() as s:
        row = s.execute(
            select(Node.state, Node.state_since, Node.state_cause).where(
                Node.id == node_id, space_store.member_of(user_id, Node.space_id)
            )
        ).first()
    if row is None:
        return None
    return {"state": row.state, "since": iso(row.state_since), "cause": row.state_cause}


async def _authorize(request: Request, node_id: str) -> Principal:
    """The caller, if they may read `node_id` (401/404 otherwise). This runs on
    every relayed query: both answers come from the auth cache when they can,
    else from the database in one threadpool hop."""
    cache = auth_cache(request.app)
    db: Database = request.app.state.db
    generation = cache.generation  # before the lookup: see AuthCache

    def cached(user: Principal) -> bool | None:
        return True if cache.visible(user.user_id, node_id) else None

    def check(user: Principal) -> bool:
        visible = _presence(db, user.user_id, node_id) is not None
        if visible:  # only "yes" is cached: a new member must not wait for a TTL
            cache.put_visible(user.user_id, node_id, generation)
        return visible

    user, visible = await require_user_with(request, cached, check, node_id)
    if not visible:
        raise not_found("Node")
    return user


async def relay(request: Request) -> Response:
    """Answer `GET` from the node's own API, through its link."""
    node_id = str(request.path_params["node_id"]).lower()
    user = await _authorize(request, node_id)
    name = str(request.path_params["name"]).strip("/")
    name = name.removeprefix("api/v1/")
    if name not in RELAYED:
        return error_response(
            404,
            "ErrNotFound",
            f"{name[:60]!r} is not relayed; use one of: {', '.join(sorted(RELAYED))}.",
        )
    # Straight from the scope: building request.url parses the whole URL again.
    query = request.scope["query_string"].decode()
    if len(query) > MAX_QUERY:
        return error_response(414, "ErrQueryTooLong", f"Keep the query under {MAX_QUERY} bytes.")
    router: Router = request.app.state.router
    timeout: float = request.app.state.settings.relay_timeout_seconds
    # A child (tether.cloud.children) is asked through its parent's link.
    known, via = children.cached_route(node_id, time.monotonic())
    if not known:
        via = await run_in_threadpool(
            children.route, request.app.state.db, node_id, time.monotonic()
        )
    target, prefix = via if via is not None else (node_id, "")
    try:
        answer = await router.request(
            target, QueryRequest(id=0, path=f"{prefix}/api/v1/{name}", query=query), timeout
        )
    except NodeNotConnected:
        # Only now read the node's state: the message says since when and why.
        node = await run_in_threadpool(_presence, request.app.state.db, user.user_id, node_id)
        if node is None:  # removed meanwhile, or access lost
            raise not_found("Node") from None
        return JSONResponse(
            {
                "errorMsgKey": "ErrNodeUnreachable",
                "errorMessage": f"node unreachable: it is {node['state']} since "
                f"{node['since']}"
                + (f" ({node['cause']})" if node["cause"] else "")
                + "; it answers again once its agent reconnects.",
                **node,
            },
            status_code=503,
            headers={"Retry-After": "5"},
        )
    except RelayTimeout as exc:
        return error_response(
            504,
            "ErrGatewayTimeout",
            f"The node did not answer within {exc.timeout:g} s; it may be overloaded or its "
            "link is failing. Try again.",
        )
    except RoutingError as exc:
        log.warning("relay to node %s failed: %s", node_id, exc)
        return error_response(502, "ErrBadGateway", f"The relay to the node failed: {exc}")
    return await _answer(request, node_id, answer)


async def _answer(request: Request, node_id: str, answer: QueryResponse) -> Response:
    """The browser's answer for the node's `answer`, made safe (module docstring)."""
    problem = refusal(answer)
    if problem:
        _warn(node_id, problem)
        return error_response(502, "ErrBadGateway", problem)
    media_type = content_type_of(answer.content_type)
    headers: dict[str, str] = {}
    if media_type == DOWNLOAD:
        headers["Content-Disposition"] = "attachment"
    if answer.status in (204, 304):  # HTTP allows no body here
        return Response(b"", answer.status, headers, media_type=media_type)
    if answer.encoding == "identity":
        return Response(answer.body, answer.status, headers, media_type=media_type)
    cap: int = request.app.state.settings.relay_max_answer_bytes
    budget = relay_budget(request.app)
    # A zlib body is exactly HTTP's "deflate" coding: pass it on as is when the
    # browser takes it (once checked to inflate within the cap), instead of
    # inflating and compressing again. Not for a download.
    accepts = request.headers.get("accept-encoding", "").lower()
    passthrough = media_type != DOWNLOAD and "deflate" in accepts
    try:
        pieces = await inflate(answer, cap, None if passthrough else budget)
    except RelayBusy:
        return error_response(
            503,
            "ErrRelayBusy",
            "The Cloud is relaying too many large answers at once (at most "
            f"{budget.total / 2**20:g} MiB of them in memory); try again in a moment.",
            {"Retry-After": BUSY_RETRY_AFTER},
        )
    except BodyTooLarge:
        _warn(node_id, f"answer inflates past the {cap} byte cap; refused")
        return error_response(
            502,
            "ErrAnswerTooLarge",
            f"The node's answer is larger than the {cap / 2**20:g} MiB a relayed answer may "
            "be; ask for less (a shorter time range, fewer points or dimensions).",
        )
    except ProtocolError as exc:
        _warn(node_id, f"unusable answer: {exc.reason}")
        return error_response(502, "ErrBadGateway", f"The node sent an unusable answer: {exc}")
    if passthrough:
        headers["Content-Encoding"] = "deflate"
        return Response(answer.body, answer.status, headers, media_type=media_type)
    return InflatedResponse(pieces, budget, answer.status, headers, media_type)


def routes() -> list[Route]:
    return [Route("/api/v2/nodes/{node_id}/{name:path}", relay, methods=["GET"])]
