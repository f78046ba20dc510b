"""`GET /api/ready`: whether this Cloud process should be sent traffic.

A load balancer health-checks this, not `/api/health` (which only says the
process answers). Not ready (503 `ErrNotReady`, `Retry-After`, and the reason)
while the process is starting (its link service not yet up), draining (told
to stop: it is handing its links over), or cannot reach the database or, in
scale-out mode, NATS. It answers from state the process already has, so it
stays fast under a reconnect storm: NATS's state is the client's own, and
the database is pinged in the background at most once a second whatever the
check rate (a failed ping marks the outage, seen by the next check).
"""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tether.cloud.db import Database
from tether.cloud.errors import error_response
from tether.cloud.outage import DATABASE_ERRORS, OutageLog

RETRY_AFTER_SECONDS = 2
PING_EVERY_SECONDS = 1.0


def _ping(db: Database) -> bool:
    try:
        with db.engine.connect() as conn:  # a checkout ends the outage (tether.cloud.outage)
            conn.execute(text("SELECT 1"))
    except DATABASE_ERRORS:
        return False
    return True


def _database_down(request: Request) -> bool:
    """What the engine last said (tether.cloud.outage), refreshed by one ping
    at most once a second, so a quiet process notices an outage too. The ping
    runs in the background and is never waited for: under a reconnect storm
    the thread pool is busy with the links' writes, and a health check that
    queued behind them would time out and take a working process out of the
    balancer (seen at 4,800 links killed over, issue 19)."""
    state = request.app.state
    now = time.monotonic()
    pinging: asyncio.Task[bool] | None = getattr(state, "ready_ping", None)
    due = now - getattr(state, "ready_pinged_at", -PING_EVERY_SECONDS) >= PING_EVERY_SECONDS
    if due and (pinging is None or pinging.done()):
        state.ready_pinged_at = now
        state.ready_ping = asyncio.ensure_future(run_in_threadpool(_ping, state.db))
    outage: OutageLog = state.db_outage
    return outage.down


async def not_ready_reason(request: Request) -> str | None:
    """Why this process should get no traffic now; None when it should."""
    state = request.app.state
    if not getattr(state, "started", False):
        return "starting"
    if state.links.closing:
        return "draining: this process is stopping and handing its links over"
    if _database_down(request):
        return "the database is unavailable"
    if not state.router.connected():
        return "NATS is unavailable"
    return None


async def ready(request: Request) -> Response:
    reason = await not_ready_reason(request)
    if reason is not None:
        return error_response(
            503,
            "ErrNotReady",
            f"This Cloud process is not ready: {reason}.",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    return JSONResponse({"status": "ready", "process_id": request.app.state.router.process_id})
