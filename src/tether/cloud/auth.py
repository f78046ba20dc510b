"""Who is asking: API tokens for scripts, cookie sessions (with CSRF) for browsers.

Other modules use `current_user(request)`, `require_user(request)` and
`csrf_token_for(request)`; the UI checks form posts with `check_csrf`; the
relay uses `require_user_with` and `auth_cache`. `sign_in` is the one sign-in,
for the API login and the web UI's form, with its limits (`LoginLimits`).

Every API call and every relayed query is authenticated, so who a credential
belongs to is cached in memory for `--auth-cache-seconds` (keyed by the SHA-256
of the token or session id; only valid credentials are cached). Commits in
this process that revoke a token, end a session, or change a user, a Space's
members or a node's Space clear the cache at once (see `_after_commit`), and
are announced through the router so that every other Cloud process clears its
own (`share_invalidations`); only if that announcement is lost do the others
wait for the TTL.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import threading
import time
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from sqlalchemy import event, inspect
from sqlalchemy.orm import Session, UOWTransaction
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tether.cloud.body import read_json
from tether.cloud.client import client_address
from tether.cloud.db import Database
from tether.cloud.errors import ApiError
from tether.cloud.limits import Clock, WindowFactory, address_key, in_memory
from tether.cloud.limits import run as run_limit
from tether.cloud.models import ApiToken, LoginSession, Node, Space, SpaceMember, User, utcnow
from tether.cloud.routing import Router
from tether.cloud.secrets import aware, dummy_password_hash, verify_password
from tether.cloud.store import users as user_store

SESSION_COOKIE = "tether_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
# How long another Cloud process may act on a revoked credential or a removed
# membership (this process forgets at once). Short on purpose.
CACHE_TTL_SECONDS = 5.0
# Bounds memory if many credentials are used within one TTL.
CACHE_MAX_ENTRIES = 50_000

T = TypeVar("T")


@dataclass(frozen=True)
class Principal:
    user_id: str
    email: str
    name: str
    via: str  # "token" or "session"
    csrf: str | None = None
    scope: str = "full"  # an API token's scope: "read" allows GET and HEAD only


class AuthCache:
    """Valid credentials -> Principal, and (user, node) pairs known visible,
    each for a few seconds. Filled from the event loop and worker threads,
    cleared from whichever thread commits a change, hence the lock.

    `generation` guards against a lookup that read the database before a
    change committed storing its stale answer after the cache was cleared:
    take it before the lookup and pass it to `put_*`."""

    def __init__(self, ttl: float = CACHE_TTL_SECONDS, max_entries: int = CACHE_MAX_ENTRIES):
        self.ttl = ttl
        self.max_entries = max_entries
        self.generation = 0
        self._lock = threading.Lock()
        self._principals: dict[str, tuple[float, Principal]] = {}
        self._visible: dict[tuple[str, str], float] = {}
        # Lookups in progress, shared by concurrent requests (event loop only).
        self.flights: dict[Hashable, asyncio.Future[Any]] = {}
        # Called (from the committing thread) after a change committed here.
        self.on_local_change: Callable[[], None] | None = None
        _caches.add(self)

    def principal(self, key: str) -> Principal | None:
        hit = self._principals.get(key)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put_principal(
        self, key: str, principal: Principal, generation: int, lifetime: float | None = None
    ) -> None:
        ttl = self.ttl if lifetime is None else min(self.ttl, lifetime)
        if ttl <= 0:
            return
        with self._lock:
            if generation == self.generation:
                self._bound(self._principals)
                self._principals[key] = (time.monotonic() + ttl, principal)

    def visible(self, user_id: str, node_id: str) -> bool:
        until = self._visible.get((user_id, node_id))
        return until is not None and until >= time.monotonic()

    def put_visible(self, user_id: str, node_id: str, generation: int) -> None:
        with self._lock:
            if generation == self.generation:
                self._bound(self._visible)
                self._visible[(user_id, node_id)] = time.monotonic() + self.ttl

    def invalidate(self) -> None:
        with self._lock:
            self.generation += 1
            self._principals.clear()
            self._visible.clear()

    def _bound(self, entries: dict[Any, Any]) -> None:
        if len(entries) < self.max_entries:
            return
        now = time.monotonic()
        for key in [k for k, v in entries.items() if (v[0] if isinstance(v, tuple) else v) < now]:
            del entries[key]
        if len(entries) >= self.max_entries:
            entries.clear()


# --- invalidation: watch every ORM session in this process --------------------

_caches: weakref.WeakSet[AuthCache] = weakref.WeakSet()
_DIRTY = "tether.auth_cache_dirty"
# Bulk UPDATE/DELETE statements on these clear the cache (node state updates do not).
_BULK_UPDATE = (ApiToken, LoginSession, User, SpaceMember, Space)
_BULK_DELETE = (*_BULK_UPDATE, Node)


def _changed(obj: object, *attrs: str) -> bool:
    state = inspect(obj)
    return any(state.attrs[a].history.has_changes() for a in attrs)


def _affects_access(session: Session) -> bool:
    """Whether this flush changes who a credential is or what a user may see."""
    for obj in session.deleted:
        if isinstance(obj, _BULK_DELETE):
            return True
    for obj in session.new:
        if isinstance(obj, SpaceMember):
            return True
    for obj in session.dirty:
        if isinstance(obj, (SpaceMember, User)):
            return True
        if isinstance(obj, ApiToken) and _changed(obj, "revoked", "token_hash", "user_id"):
            return True
        if isinstance(obj, LoginSession) and _changed(obj, "user_id", "expires_at"):
            return True
        if isinstance(obj, Node) and _changed(obj, "space_id"):
            return True
    return False


@event.listens_for(Session, "after_flush")
def _after_flush(session: Session, _ctx: UOWTransaction) -> None:
    if _affects_access(session):
        session.info[_DIRTY] = True


@event.listens_for(Session, "do_orm_execute")
def _on_execute(state: Any) -> None:
    watched = _BULK_DELETE if state.is_delete else _BULK_UPDATE if state.is_update else ()
    if watched and any(issubclass(m.class_, watched) for m in state.all_mappers):
        state.session.info[_DIRTY] = True


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    if session.info.pop(_DIRTY, False):
        for cache in list(_caches):
            cache.invalidate()
            if cache.on_local_change is not None:
                cache.on_local_change()


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_DIRTY, None)


def auth_cache(app: Starlette) -> AuthCache:
    """The app's cache, made on first use."""
    cache: AuthCache | None = getattr(app.state, "auth_cache", None)
    if cache is None:
        settings = getattr(app.state, "settings", None)
        ttl = settings.auth_cache_seconds if settings is not None else CACHE_TTL_SECONDS
        cache = app.state.auth_cache = AuthCache(ttl)
    return cache


def share_invalidations(cache: AuthCache, router: Router) -> None:
    """Clear `cache` when another Cloud process announces an access change, and
    announce this process's own. Call from the running event loop (at start)."""
    loop = asyncio.get_running_loop()
    sending: set[asyncio.Task[None]] = set()

    def announce() -> None:
        task = loop.create_task(router.announce_access_change())
        sending.add(task)
        task.add_done_callback(sending.discard)

    # Commits happen in worker threads: hand the announcement to the loop.
    def changed_here() -> None:
        loop.call_soon_threadsafe(announce)

    cache.on_local_change = changed_here

    async def heard() -> None:
        cache.invalidate()

    router.subscribe_access_change(heard)


# --- lookups ---------------------------------------------------------------------


def _lookup(db: Database, bearer: str | None, sid: str | None) -> tuple[Principal | None, float]:
    """The principal behind the credentials (from the database) and how many
    seconds it may be cached at most."""
    if bearer is not None:
        with db.session() as s:
            found = user_store.api_token_owner(s, bearer)
            if found is None:
                return None, 0.0
            user, row = found
            principal = Principal(user.id, user.email, user.name, "token", scope=row.scope)
            touch = user_store.touch_due(row)
            # Cached no longer than the token lives (else only the cache's TTL bounds it).
            left = (
                (aware(row.expires_at) - utcnow()).total_seconds() if row.expires_at else math.inf
            )
        if touch:
            with db.session(write_lock=True) as s:
                user_store.touch_api_token(s, bearer)
        return principal, left
    if sid:
        with db.session() as s:
            session_found = user_store.session_for(s, sid)
            if session_found:
                user, session_row = session_found
                left = (aware(session_row.expires_at) - utcnow()).total_seconds()
                return Principal(user.id, user.email, user.name, "session", session_row.csrf), left
    return None, 0.0


def _credentials(request: Request) -> tuple[str | None, str | None, str | None]:
    """(bearer token, session id, cache key) from the request."""
    header = request.headers.get("authorization", "")
    bearer = header[7:].strip() if header.lower().startswith("bearer ") else None
    sid = request.cookies.get(SESSION_COOKIE) or None
    if bearer is not None:
        return bearer, sid, "t" + hashlib.sha256(bearer.encode()).hexdigest()
    if sid:
        return None, sid, "s" + hashlib.sha256(sid.encode()).hexdigest()
    return None, None, None


def _bad_token() -> ApiError:
    return ApiError(
        401,
        "ErrUnauthorized",
        "The API token is not valid or was revoked; create a new one.",
        {"WWW-Authenticate": "Bearer"},
    )


async def _resolve(
    request: Request,
    cached: Callable[[Principal], T | None] | None,
    check: Callable[[Principal], T] | None,
    topic: str = "",
) -> tuple[Principal | None, T | None]:
    """The principal, and `check`'s answer unless `cached` knew it, doing any
    database work for both in one threadpool hop. Concurrent requests needing
    the same lookup (same credential or user, same `topic` of `check`) share
    one hop: when an entry expires under load, one query refreshes it instead
    of one per request in flight."""
    principal: Principal | None
    bearer = sid = key = None
    cache = auth_cache(request.app)
    if hasattr(request.state, "principal"):  # already resolved for this request
        principal = request.state.principal
        known = True
    else:
        bearer, sid, key = _credentials(request)
        principal = cache.principal(key) if key else None
        known = principal is not None or key is None
    result = cached(principal) if cached is not None and principal is not None else None
    if known and (result is not None or check is None or principal is None):
        request.state.principal = principal
        return principal, result

    db: Database = request.app.state.db
    generation = cache.generation  # before the lookup: see AuthCache

    async def lookup() -> tuple[Principal | None, T | None]:
        def work() -> tuple[Principal | None, float, T | None]:
            p, lifetime = (principal, 0.0) if known else _lookup(db, bearer, sid)
            return p, lifetime, (check(p) if check is not None and p is not None else None)

        p, lifetime, answer = await run_in_threadpool(work)
        if not known and p is not None:
            cache.put_principal(key or "", p, generation, lifetime)
        return p, answer

    who = principal.user_id if known and principal is not None else key
    flight = (generation, who, topic if check is not None else None)
    task = cache.flights.get(flight)
    if task is None:
        task = cache.flights[flight] = asyncio.ensure_future(lookup())
        task.add_done_callback(lambda _: cache.flights.pop(flight, None))
    # shield: a client that goes away must not cancel the lookup others wait on.
    found, result = await asyncio.shield(task)
    if found is None and bearer is not None:
        raise _bad_token()
    request.state.principal = found
    return found, result


async def current_user(request: Request) -> Principal | None:
    """The signed-in user, from `Authorization: Bearer tat_...` or the session cookie."""
    principal, _ = await _resolve(request, None, None)
    return principal


def _require(request: Request, principal: Principal | None) -> Principal:
    if principal is None:
        raise ApiError(
            401,
            "ErrUnauthorized",
            "Sign in first: send 'Authorization: Bearer <API token>' or log in at "
            "/api/v1/auth/login.",
            {"WWW-Authenticate": "Bearer"},
        )
    check_csrf(request, principal, request.headers.get(CSRF_HEADER))
    if (
        principal.via == "token"
        and principal.scope == "read"
        and request.method not in SAFE_METHODS
    ):
        raise ApiError(
            403,
            "ErrTokenScope",
            "This API token is read-only (scope read): it may only GET. Create a token "
            "with scope full on your account page for changes.",
        )
    return principal


async def require_user_with(
    request: Request,
    cached: Callable[[Principal], T | None],
    check: Callable[[Principal], T],
    topic: str,
) -> tuple[Principal, T]:
    """`require_user`, plus a per-request permission answer: `cached(user)`
    from memory (None when it does not know), else `check(user)`, a blocking
    database call run in the same threadpool hop as the credential lookup.
    `topic` names what `check` decides (e.g. the node id): concurrent requests
    with the same user and topic share one check."""
    principal, result = await _resolve(request, cached, check, topic)
    user = _require(request, principal)
    return user, cast(T, result)  # set whenever there is a principal


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
    return _require(request, await current_user(request))


async def csrf_token_for(request: Request) -> str | None:
    principal = await current_user(request)
    return principal.csrf if principal else None


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


# --- signing in ------------------------------------------------------------------

# Sign-in attempts per minute. Each is counted when it starts, so attempts in
# flight count too (60 concurrent guesses cannot all slip under the limit), and
# taken back when it succeeds: the limits are on guesses, not on sign-ins.
LOGIN_ATTEMPTS_PER_ADDRESS = 10  # per IPv4 address or IPv6 /64
# Per account (email, whether it exists or not), from all addresses together:
# above the per-address limit, so one address alone cannot lock a user out.
LOGIN_ATTEMPTS_PER_ACCOUNT = 20
LOGIN_WINDOW_SECONDS = 60.0
_MAX_EMAIL = 320


class LoginLimits:
    """The sign-in limits, one set for the API and the web UI so neither is a
    way around the other."""

    def __init__(
        self,
        clock: Clock = time.monotonic,
        per_address: int = LOGIN_ATTEMPTS_PER_ADDRESS,
        per_account: int = LOGIN_ATTEMPTS_PER_ACCOUNT,
        windows: WindowFactory | None = None,
    ) -> None:
        # `windows`: shared by every Cloud process in scale-out (tether.cloud.shared_limits).
        make = windows or in_memory(clock)
        self.addresses = make("login-address", per_address, LOGIN_WINDOW_SECONDS)
        self.accounts = make("login-account", per_account, LOGIN_WINDOW_SECONDS)
        self.blocking = self.addresses.blocking or self.accounts.blocking

    def begin(self, address: str, account: str) -> None:
        """Count an attempt now, before the password is checked; raise 429 if
        the address or the account is over its limit."""
        wait = self.addresses.hit(address)
        if wait:
            raise _too_many("from your address", wait)
        wait = self.accounts.hit(account)
        if wait:
            self.addresses.undo(address)  # not attempted: no password was checked
            raise _too_many("for this account", wait)

    def succeeded(self, address: str, account: str) -> None:
        """Take back this attempt only. The address's other failures stay, so
        signing in to one's own account does not buy guesses at others."""
        self.addresses.undo(address)
        self.accounts.undo(account)


def _too_many(where: str, wait: int) -> ApiError:
    return ApiError(
        429,
        "ErrRateLimited",
        f"Too many sign-in attempts {where}; try again in {wait} s.",
        {"Retry-After": str(wait)},
    )


def login_limits(app: Starlette) -> LoginLimits:
    """The app's sign-in limits, made on first use."""
    limits: LoginLimits | None = getattr(app.state, "login_limits", None)
    if limits is None:
        limits = app.state.login_limits = LoginLimits()
    return limits


@dataclass(frozen=True)
class SignedIn:
    sid: str
    csrf: str


async def sign_in(
    db: Database, limits: LoginLimits, email: str, password: str, address: str, days: int
) -> SignedIn:
    """The one sign-in, for the API and the web UI: limits first (the attempt
    is counted before the slow password check), then the check, then a new
    session. 401 `ErrUnauthorized` for a wrong password and an unknown account
    alike; 429 `ErrRateLimited` with Retry-After over a limit."""
    account = user_store.normalize_email(email)[:_MAX_EMAIL]
    where = address_key(address)
    await run_limit(limits.blocking, limits.begin, where, account)
    found = await run_in_threadpool(_check_and_start_session, db, account, password, days)
    if found is None:
        raise ApiError(401, "ErrUnauthorized", "Wrong email or password.")
    await run_limit(limits.blocking, limits.succeeded, where, account)
    return found


def _check_and_start_session(db: Database, email: str, password: str, days: int) -> SignedIn | None:
    """Argon2 (slow on purpose) runs between two short transactions, never in
    one: a write lock held meanwhile would stall every claim and node update."""
    with db.session() as s:
        user = user_store.by_email(s, email)
        user_id, stored = (user.id, user.password_hash) if user else (None, dummy_password_hash())
    # An unknown account is checked against a dummy hash: the same answer, as slow.
    if not verify_password(stored, password) or user_id is None:
        return None
    with db.session(write_lock=True) as s:
        row = s.get(User, user_id)
        if row is None or row.password_hash != stored:  # changed while being checked
            return None
        sid, session_row = user_store.create_session(s, row, days)
        return SignedIn(sid, session_row.csrf)


async def login(request: Request) -> Response:
    """Log in with JSON {"email", "password"}.

    Sets the session cookie and returns {"csrf_token"} for the X-CSRF-Token header."""
    try:
        body = await read_json(request)  # 400 for non-JSON or too deep, 413 too large
        email, password = body["email"], body["password"]
        if not isinstance(email, str) or not isinstance(password, str):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise ApiError(400, "ErrBadRequest", 'Send JSON {"email": ..., "password": ...}.') from None
    app = request.app
    signed = await sign_in(
        app.state.db,
        login_limits(app),
        email,
        password,
        client_address(request),
        app.state.settings.session_days,
    )
    response = JSONResponse({"csrf_token": signed.csrf})
    set_session_cookie(request, response, signed.sid)
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
