"""Who is on the other end of a connection: the one client address the claim,
sign-in, node auth and link endpoints log, audit and rate limit by."""

from __future__ import annotations

from starlette.requests import HTTPConnection


def client_address(conn: HTTPConnection) -> str:
    """The peer's address for an HTTP request or a WebSocket (both are
    HTTPConnections). IPv4 clients of a dual-stack socket appear as
    ::ffff:a.b.c.d; shown here as plain a.b.c.d."""
    host = conn.client.host if conn.client else "unknown"
    return host[7:] if host.startswith("::ffff:") and "." in host else host
