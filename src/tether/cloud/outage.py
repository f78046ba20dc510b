"""Database outages: a clear, retryable answer and one log line per outage.

While the database cannot be reached, anything that needs it (API, relay
permission checks, node authentication, claims, the UI, the link's upgrade)
raises one of `DATABASE_ERRORS`. The app maps them all, wherever they come
from, to `503 ErrDatabaseUnavailable` with `Retry-After: 5`: JSON for the API
and the link, an HTML page for the UI. Nothing needs restarting: every
request tries the database again (PostgreSQL pools ping a connection before
handing it out, and reconnect), so the Cloud recovers by itself.

The log says "database unavailable: ..." when an outage starts and "database
reachable again after N s" when it ends, whichever part of the Cloud hit it:
`watch` learns both from the engine itself (a failed connection, or a
connection lost; then the first connection handed out again). Other database
errors answered with 503 (an SQLite lock timeout) are logged at most once a
minute.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy import exc as sa_exc
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketState

from tether.cloud.errors import error_response
from tether.cloud.limits import Clock, LogLimiter

log = logging.getLogger("tether.cloud.db")

# What a database that is down, unreachable or too busy raises through
# SQLAlchemy (IntegrityError and other programming errors are not here: those
# stay 500s).
DATABASE_ERRORS: tuple[type[Exception], ...] = (
    sa_exc.OperationalError,  # connection refused or lost, server shutting down, SQLite locked
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,  # no pooled connection came free in time
)
RETRY_AFTER_SECONDS = 5
KEY = "ErrDatabaseUnavailable"
MESSAGE = (
    "The Cloud cannot reach its database right now; nothing was changed. "
    f"Try again in {RETRY_AFTER_SECONDS} s; the Cloud recovers by itself once its database is back."
)
CLOSE_TRY_AGAIN_LATER = 1013  # RFC 6455: "Try Again Later"


def reason_of(exc: BaseException) -> str:
    """The first line of the driver's message, without SQLAlchemy's footer."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {text[0][:300] if text else ''}"


class OutageLog:
    """Whether the database is down, so that an outage is logged once when it
    starts and once when it ends. Thread-safe; the clock is passed in."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.since: float | None = None
        self._lock = threading.Lock()

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, reason: str) -> str | None:
        """A connection failed: the line to log if this starts an outage."""
        with self._lock:
            if self.since is not None:
                return None
            self.since = self.clock()
        return f"database unavailable: {reason}; answering 503 {KEY} until it is back"

    def reachable(self) -> str | None:
        """A connection worked: the line to log if this ends an outage."""
        if self.since is None:  # the common case, without the lock
            return None
        with self._lock:
            if self.since is None:
                return None
            seconds = self.clock() - self.since
            self.since = None
        return f"database reachable again after {seconds:.0f} s"


def watch(engine: Engine, outage: OutageLog) -> None:
    """Feed `outage` from the engine: every failed or lost connection, from
    requests and background work alike, and every connection handed out."""

    @event.listens_for(engine, "handle_error")
    def _on_error(ctx: Any) -> None:
        if ctx.is_pre_ping:
            return  # the pool reconnects by itself; if that fails, it is reported next
        if ctx.connection is None or ctx.is_disconnect:
            line = outage.failed(reason_of(ctx.original_exception))
            if line:
                log.error(line)

    @event.listens_for(engine, "checkout")
    def _on_checkout(*_args: Any) -> None:
        # On PostgreSQL the pool pinged the connection before this.
        line = outage.reachable()
        if line:
            log.warning(line)


def _wants_html(request: Request) -> bool:
    path = request.url.path
    return not path.startswith("/api/") and "text/html" in request.headers.get("accept", "")


async def database_unavailable(conn: HTTPConnection, exc: Exception) -> Response | None:
    """The app's handler for DATABASE_ERRORS (HTTP and WebSocket)."""
    state = conn.app.state
    if not state.db_outage.down:  # not a lost connection: say so, but rarely
        limiter: LogLimiter = state.db_error_log
        allowed, skipped = limiter.allow("db")
        if allowed:
            more = f" ({skipped} more since the last such line)" if skipped else ""
            log.warning("database error answered with 503: %s%s", reason_of(exc), more)
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    if isinstance(conn, WebSocket):
        if conn.application_state is WebSocketState.CONNECTING:
            await conn.send_denial_response(error_response(503, KEY, MESSAGE, headers))
        else:
            await conn.close(CLOSE_TRY_AGAIN_LATER, "database unavailable; retry later")
        return None
    assert isinstance(conn, Request)
    if _wants_html(conn):
        from tether.cloud.web.common import render  # the UI imports the API side, not back

        page = render(
            conn, "error.html", {"status": 503, "message": MESSAGE, "title": "Tether"}, 503
        )
        page.headers.update(headers)
        return page
    return error_response(503, KEY, MESSAGE, headers)


def handlers() -> dict[Any, Any]:
    """The exception handlers to give Starlette (they run inside its
    ExceptionMiddleware: no traceback, the connection stays usable)."""
    return dict.fromkeys(DATABASE_ERRORS, database_unavailable)


def install(app: Any, engine: Engine) -> None:
    """Track outages of `engine` for `app`'s handlers and log."""
    app.state.db_outage = OutageLog(time.monotonic)
    app.state.db_error_log = LogLimiter(1, 60.0, time.monotonic)
    watch(engine, app.state.db_outage)
