"""The relay: a signed-in user reads a node's own API through the Cloud.

    GET /api/v2/nodes/{node_id}/{info|charts|chart|data|alarms|alarm_log|allmetrics}?QUERY
    (also /api/v2/nodes/{node_id}/api/v1/{name}?QUERY, the agent's own path)

The caller must be a member of the node's Space (404 otherwise, 401 without
credentials). The query goes as a `QueryRequest` through the Router to the
Cloud process holding the node's link, and the agent's status, content type
and body come back. 503 when the node has no live link (with its state and
since when), 504 when it does not answer in time. Bodies pass through memory
only: never stored, never logged.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tether.cloud.auth import Principal, auth_cache, require_user_with
from tether.cloud.db import Database
from tether.cloud.errors import error_response, not_found
from tether.cloud.models import Node, SpaceMember
from tether.cloud.routing import NodeNotConnected, RelayTimeout, Router, RoutingError
from tether.cloud.secrets import iso
from tether.protocol.frames import ProtocolError, QueryRequest, response_body

log = logging.getLogger("tether.cloud.relay")

# The agent API paths a browser may read through the Cloud (docs/api.md).
RELAYED = frozenset({"info", "charts", "chart", "data", "alarms", "alarm_log", "allmetrics"})
MAX_QUERY = 2048


def _presence(db: Database, user_id: str, node_id: str) -> dict[str, Any] | None:
    """The node's presence if `user_id` is a member of its Space, else None."""
    with db.session() as s:
        row = s.execute(
            select(Node.state, Node.state_since, Node.state_cause)
            .join(SpaceMember, SpaceMember.space_id == Node.space_id)
            .where(Node.id == node_id, SpaceMember.user_id == user_id)
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
    try:
        answer = await router.request(
            node_id, QueryRequest(id=0, path=f"/api/v1/{name}", query=query), timeout
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
    headers = {"Cache-Control": "no-store"}
    # A zlib body is exactly HTTP's "deflate" coding: pass it on as is when the
    # browser takes it, instead of inflating and compressing again.
    accepts = request.headers.get("accept-encoding", "").lower()
    if answer.encoding == "zlib" and "deflate" in accepts:
        headers["Content-Encoding"] = "deflate"
        return Response(answer.body, answer.status, headers, media_type=answer.content_type)
    try:
        body = response_body(answer)
    except ProtocolError as exc:
        log.warning("relay to node %s: unusable answer: %s", node_id, exc.reason)
        return error_response(502, "ErrBadGateway", f"The node sent an unusable answer: {exc}")
    return Response(body, answer.status, headers, media_type=answer.content_type)


def routes() -> list[Route]:
    return [Route("/api/v2/nodes/{node_id}/{name:path}", relay, methods=["GET"])]
