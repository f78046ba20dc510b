"""Your API tokens in the browser: create one (name, scope, expiry; the
secret is shown once, in the answer to the form), list them, revoke one.

The same rules as `/api/v1/me/api-tokens` (tether.cloud.api): a token is
the signed-in user's own; `read` tokens may only GET (tether.cloud.auth);
an expired or revoked token is refused at once on this Cloud process (the
auth cache is cleared on revocation, and an entry never outlives the token).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response

from tether.cloud.auth import Principal
from tether.cloud.models import User, utcnow
from tether.cloud.secrets import iso
from tether.cloud.store import users as user_store
from tether.cloud.web.common import (
    UiError,
    field,
    form_of,
    in_db,
    my_spaces,
    page,
    redirect,
    render,
    signed_in,
)

log = logging.getLogger("tether.cloud")

# The expiry menu: label -> days (0: never).
EXPIRIES = {"7 days": 7, "30 days": 30, "90 days": 90, "1 year": 365, "never": 0}
DEFAULT_EXPIRY = "90 days"
FLASH = {"revoked": "API token revoked: it stops working at once."}


def token_rows(s: Session, user_id: str) -> list[dict[str, Any]]:
    now = utcnow()
    out = []
    for t in reversed(user_store.api_tokens_of(s, user_id)):
        expired = user_store.api_token_expired(t, now)
        out.append(
            {
                "prefix": t.prefix,
                "name": t.name,
                "scope": t.scope,
                "created_at": iso(t.created_at),
                "expires_at": iso(t.expires_at) if t.expires_at else "",
                "last_used_at": iso(t.last_used_at) if t.last_used_at else "",
                "state": "revoked" if t.revoked else "expired" if expired else "active",
            }
        )
    return out


def _page(request: Request, user: Principal, s: Session, **extra: Any) -> dict[str, Any]:
    ctx: dict[str, Any] = {
        "title": "API tokens",
        "user": user,
        "csrf": user.csrf or "",
        "spaces": my_spaces(s, user.user_id),
        "tokens": token_rows(s, user.user_id),
        "scopes": user_store.SCOPES,
        "expiries": list(EXPIRIES),
        "default_expiry": DEFAULT_EXPIRY,
        "created": None,
        "error": "",
    }
    ctx.update(extra)
    return ctx


@page
async def tokens_page(request: Request) -> Response:
    user = await signed_in(request)
    ctx = await in_db(request, lambda s: _page(request, user, s))
    ctx["flash"] = FLASH.get(request.query_params.get("done", ""))
    return render(request, "api_tokens.html", ctx)


@page
async def create_token(request: Request) -> Response:
    """The answer holds the secret, once: it is not stored (only its SHA-256)
    and the page is never cached (Cache-Control: no-store on every page)."""
    user = await signed_in(request)
    form = await form_of(request, user)
    name, scope, expiry = field(form, "name"), field(form, "scope"), field(form, "expiry")
    problem = ""
    if not name or len(name) > 200:
        problem = "Give the token a name of 1 to 200 characters (what it is for)."
    elif scope not in user_store.SCOPES:
        problem = f"Choose a scope: {' or '.join(user_store.SCOPES)}."
    elif expiry not in EXPIRIES:
        problem = f"Choose an expiry: {', '.join(EXPIRIES)}."

    def create(s: Session) -> dict[str, Any]:
        if problem:
            return _page(request, user, s, error=problem)
        row = s.get(User, user.user_id)
        if row is None:
            raise UiError(404, "Your account no longer exists.")
        days = EXPIRIES[expiry]
        expires = utcnow() + dt.timedelta(days=days) if days else None
        secret, token = user_store.create_api_token(s, row, name, scope, expires)
        log.info("API token %s (%s) created by %s", token.prefix, scope, user.email)
        created = {"secret": secret, "name": token.name, "prefix": token.prefix, "scope": scope}
        return _page(request, user, s, created=created)

    ctx = await in_db(request, create, write=True)
    return render(request, "api_tokens.html", ctx, 400 if problem else 200)


@page
async def revoke_token(request: Request) -> Response:
    user = await signed_in(request)
    await form_of(request, user)
    prefix = request.path_params["prefix"]

    def revoke(s: Session) -> bool:
        return user_store.revoke_api_token(s, user.user_id, prefix)

    if not await in_db(request, revoke, write=True):
        raise UiError(404, "You have no API token with that prefix (it may be another user's).")
    log.info("API token %s of %s revoked", prefix[:16], user.email)
    return redirect("/account/api-tokens?done=revoked")
