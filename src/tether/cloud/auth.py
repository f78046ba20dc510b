"""Who is asking: API tokens for scripts, cookie sessions (with CSRF) for browsers.

Other modules use `current_user(request)`, `require_user(request)` and
`csrf_token_for(request)`; the UI checks form posts with `check_csrf`.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tether.cloud.body import read_limited
from tether.cloud.db import Database
from tether.cloud.errors import ApiError
from tether.cloud.store import users as user_store

SESSION_COOKIE = "tether_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


@dataclass(frozen=True)
class Principal:
    user_id: str
    email: str
    name: str
    via: str  # "token" or "session"
    csrf: str | None = None


def _lookup(db: Database, bearer: str | None, sid: str | None) -> Principal | None:
    if bearer is not None:
        with db.session() as s:
            user = user_store.user_for_api_token(s, bearer)
            touch = user is not None and user_store.needs_touch(s, bearer)
            principal = Principal(user.id, user.email, user.name, "token") if user else None
        if touch:
            with db.session(write_lock=True) as s:
                user_store.touch_api_token(s, bearer)
        return principal
    with db.session() as s:
        if sid:
            found = user_store.session_for(s, sid)
            if found:
                user, row = found
                return Principal(user.id, user.email, user.name, "session", row.csrf)
    return None


async def current_user(request: Request) -> Principal | None:
    """The signed-in user, from `Authorization: Bearer tat_...` or the session cookie."""
    if hasattr(request.state, "principal"):
        return request.state.principal  # type: ignore[no-any-return]
    header = request.headers.get("authorization", "")
    bearer = header[7:].strip() if header.lower().startswith("bearer ") else None
    sid = request.cookies.get(SESSION_COOKIE)
    principal = None
    if bearer is not None or sid:
        principal = await run_in_threadpool(_lookup, request.app.state.db, bearer, sid)
    if header and bearer is not None and principal is None:
        raise ApiError(
            401,
            "ErrUnauthorized",
            "The API token is not valid or was revoked; create a new one.",
            {"WWW-Authenticate": "Bearer"},
        )
    request.state.principal = principal
    return principal


def check_csrf(request: Request, principal: Principal, value: str | None) -> None:
    if principal.via != "session" or request.method in SAFE_METHODS:
        return
    if not value or not principal.csrf or not hmac.compare_digest(value, principal.csrf):
        raise ApiError(
            403,
            "ErrCSRF",
            f"Missing or wrong {CSRF_HEADER} header; reload the page and try again.",
        )


async def require_user(request: Request) -> Principal:
    """The signed-in user, else 401; checks CSRF for cookie-authenticated writes."""
    principal = await current_user(request)
    if principal is None:
        raise ApiError(
            401,
            "ErrUnauthorized",
            "Sign in first: send 'Authorization: Bearer <API token>' or log in at "
            "/api/v1/auth/login.",
            {"WWW-Authenticate": "Bearer"},
        )
    check_csrf(request, principal, request.headers.get(CSRF_HEADER))
    return principal


async def csrf_token_for(request: Request) -> str | None:
    principal = await current_user(request)
    return principal.csrf if principal else None


def _login(db: Database, email: str, password: str, days: int) -> tuple[str, str] | None:
    with db.session(write_lock=True) as s:
        user = user_store.authenticate(s, email, password)
        if user is None:
            return None
        sid, row = user_store.create_session(s, user, days)
        return sid, row.csrf


def set_session_cookie(request: Request, response: Response, sid: str) -> None:
    settings = request.app.state.settings
    response.set_cookie(
        SESSION_COOKIE,
        sid,
        max_age=settings.session_days * 86400,
        httponly=True,
        secure=not settings.insecure_http,
        samesite="lax",
        path="/",
    )


async def login(request: Request) -> Response:
    """Log in with JSON {"email", "password"}.

    Sets the session cookie and returns {"csrf_token"} for the X-CSRF-Token header."""
    try:
        body = json.loads(await read_limited(request))
        email, password = body["email"], body["password"]
        if not isinstance(email, str) or not isinstance(password, str):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise ApiError(400, "ErrBadRequest", 'Send JSON {"email": ..., "password": ...}.') from None
    settings = request.app.state.settings
    found = await run_in_threadpool(
        _login, request.app.state.db, email, password, settings.session_days
    )
    if found is None:
        raise ApiError(401, "ErrUnauthorized", "Wrong email or password.")
    sid, csrf = found
    response = JSONResponse({"csrf_token": csrf})
    set_session_cookie(request, response, sid)
    return response


def _logout(db: Database, sid: str) -> None:
    with db.session() as s:
        user_store.delete_session(s, sid)


async def logout(request: Request) -> Response:
    """End the browser session."""
    sid = request.cookies.get(SESSION_COOKIE)
    if sid:
        await require_user(request)  # a cross-site page must not log people out
        await run_in_threadpool(_logout, request.app.state.db, sid)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def routes() -> list[Route]:
    return [
        Route("/api/v1/auth/login", login, methods=["POST"]),
        Route("/api/v1/auth/logout", logout, methods=["POST"]),
    ]
