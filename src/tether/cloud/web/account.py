"""Your account: change your password; and a Space admin's password reset.

Changing one's password needs the current one (checked under the sign-in
limits, so this form is no way around them); the new password signs out every
other browser, and this one gets a fresh session.

A Space admin may reset the password of a member of that Space (e.g. one who
forgot it): the Cloud makes a random password, shown once to the admin to
hand over, and signs the member out everywhere. Only if the admin is an admin
of EVERY Space the member belongs to: otherwise an admin of one Space could
take over someone who administers another. The operator's way, for anyone, is
`tether-cloud admin set-password`.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from tether.cloud import auth
from tether.cloud.auth import Principal
from tether.cloud.client import client_address
from tether.cloud.errors import ApiError
from tether.cloud.limits import address_key
from tether.cloud.limits import run as run_limit
from tether.cloud.models import SpaceMember, User
from tether.cloud.secrets import iso, verify_password
from tether.cloud.store import spaces as space_store
from tether.cloud.store import users as user_store
from tether.cloud.web.common import (
    UiError,
    form_of,
    in_db,
    member_space,
    my_spaces,
    nav,
    page,
    redirect,
    render,
    signed_in,
)

log = logging.getLogger("tether.cloud")
MIN_PASSWORD = 8
FLASH = {"password-changed": "Password changed. Your other browsers were signed out."}


def _ctx(s: Session, user: Principal, **extra: Any) -> dict[str, Any]:
    row = s.get(User, user.user_id)
    ctx: dict[str, Any] = {
        "title": "Your account",
        "user": user,
        "csrf": user.csrf or "",
        "spaces": my_spaces(s, user.user_id),
        "created_at": iso(row.created_at) if row else "",
        "error": "",
        "min_password": MIN_PASSWORD,
    }
    ctx.update(extra)
    return ctx


@page
async def account_page(request: Request) -> Response:
    user = await signed_in(request)
    ctx = await in_db(request, lambda s: _ctx(s, user))
    ctx["flash"] = FLASH.get(request.query_params.get("done", ""))
    return render(request, "account.html", ctx)


@page
async def change_password(request: Request) -> Response:
    user = await signed_in(request)
    form = await form_of(request, user)
    current, new, again = (
        str(form.get("current") or ""),
        str(form.get("password") or ""),
        str(form.get("again") or ""),
    )

    async def refuse(message: str, status: int = 400) -> Response:
        ctx = await in_db(request, lambda s: _ctx(s, user, error=message))
        return render(request, "account.html", ctx, status)

    if len(new) < MIN_PASSWORD:
        return await refuse(f"The new password must have at least {MIN_PASSWORD} characters.")
    if new != again:
        return await refuse("The two new passwords differ; type the same one twice.")
    limits = auth.login_limits(request.app)
    where, account = address_key(client_address(request)), user.email
    try:  # the same limits as signing in (shared by every Cloud process in scale-out)
        await run_limit(limits.blocking, limits.begin, where, account)
    except ApiError as exc:
        response = await refuse(exc.message, exc.status)
        response.headers.update(exc.headers)
        return response
    db = request.app.state.db

    def stored() -> str:
        with db.session() as s:
            row = s.get(User, user.user_id)
            return row.password_hash if row else ""

    known = await run_in_threadpool(stored)
    # Argon2 outside any transaction (it is slow on purpose).
    if not known or not await run_in_threadpool(verify_password, known, current):
        return await refuse("Your current password is not right.", 403)
    await run_limit(limits.blocking, limits.succeeded, where, account)
    days = request.app.state.settings.session_days

    def change(s: Session) -> str:
        row = s.get(User, user.user_id)
        if row is None or row.password_hash != known:  # changed meanwhile
            raise UiError(409, "Your password was changed meanwhile; sign in again.")
        user_store.set_password(s, row, new)  # signs out every browser
        sid, _ = user_store.create_session(s, row, days)
        return sid

    sid = await in_db(request, change, write=True)
    log.info("password of %s changed by its owner", user.email)
    response = redirect("/account?done=password-changed")
    auth.set_session_cookie(request, response, sid)
    return response


def _may_reset(s: Session, admin: Principal, target_id: str) -> str | None:
    """Why `admin` may not reset `target_id`'s password, or None."""
    if target_id == admin.user_id:
        return "Change your own password on your account page, with your current password."
    theirs = set(s.scalars(select(SpaceMember.space_id).where(SpaceMember.user_id == target_id)))
    mine = {sp.id for sp, role in space_store.spaces_of(s, admin.user_id) if role == "admin"}
    if not theirs <= mine:
        return (
            "This person is also a member of a Space you are not an admin of, so only the "
            "Cloud's operator can reset their password (tether-cloud admin set-password)."
        )
    return None


@page
async def reset_password(request: Request) -> Response:
    """POST /spaces/{space}/members/{user}/reset-password (Space admins)."""
    user = await signed_in(request)
    await form_of(request, user)
    sid, target_id = request.path_params["space_id"], request.path_params["user_id"]
    password = secrets.token_urlsafe(12)

    def reset(s: Session) -> dict[str, Any]:
        space, role = member_space(s, user, sid, "admin")
        target = s.get(User, target_id)
        member = s.get(SpaceMember, (space.id, target_id)) if target else None
        if target is None or member is None:
            raise UiError(404, "That person is no longer a member of this Space.")
        why = _may_reset(s, user, target_id)
        if why:
            raise UiError(403, why)
        user_store.set_password(s, target, password)  # signs them out everywhere
        ctx = nav(s, user, space, role)
        ctx.update(title="Password reset", target_email=target.email, password=password)
        return ctx

    ctx = await in_db(request, reset, write=True)
    log.info("password of %s reset by %s", ctx["target_email"], user.email)
    return render(request, "password_reset.html", ctx)
