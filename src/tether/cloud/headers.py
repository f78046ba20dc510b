"""Security headers on every HTTP answer, added in one place (ASGI middleware).

- Every `/api/` answer (JSON, relayed node answers, errors, claim and auth):
  `Content-Security-Policy: sandbox; default-src 'none'`,
  `X-Content-Type-Options: nosniff` and `Cache-Control: no-store`, replacing
  whatever the handler set. An API answer is data, never a document: should a
  browser open one (a relayed node answer above all), it runs no script, loads
  nothing and has no access to the Cloud's origin.
- Any other answer (UI pages, static files, /ca.pem, /kickstart.sh, 404s):
  `nosniff`, `X-Frame-Options: DENY` and a CSP of `default-src 'none';
  frame-ancestors 'none'` unless the answer has its own (the UI pages and
  their static files do: tether.cloud.web.common.CSP allows 'self').
- `Strict-Transport-Security: max-age=31536000` on every answer over HTTPS
  (TLS, or `X-Forwarded-Proto: https` from a proxy uvicorn trusts); never over
  plain HTTP (`--insecure-http`), where browsers ignore it anyway.

A 500 from an unhandled exception is made outside this middleware
(tether.cloud.errors.internal_error_handler sets the API headers itself).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

API_PREFIX = "/api/"
HSTS = (b"strict-transport-security", b"max-age=31536000")
API_HEADERS = (
    (b"content-security-policy", b"sandbox; default-src 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-store"),
)
OTHER_DEFAULTS = (
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
)
_API_NAMES = frozenset(name for name, _ in API_HEADERS) | {HSTS[0]}


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = str(scope.get("path", "")).startswith(API_PREFIX)
        https = scope.get("scheme") == "https"

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": secured(message.get("headers", []), api, https)}
            await send(message)

        await self.app(scope, receive, send_secured)


def secured(
    headers: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...], api: bool, https: bool
) -> list[tuple[bytes, bytes]]:
    """`headers` (raw ASGI pairs, lower-case names) with the security headers."""
    if api:
        out = [(k, v) for k, v in headers if k.lower() not in _API_NAMES]
        out.extend(API_HEADERS)
    else:
        out = [(k, v) for k, v in headers if k.lower() != HSTS[0]]
        present = {k.lower() for k, _ in out}
        out.extend((k, v) for k, v in OTHER_DEFAULTS if k not in present)
    if https:
        out.append(HSTS)
    return out
