"""The invitee's side of invitations: the list on the home page, Accept and
Decline, and the invite link (`/invite/TOKEN`). Nobody joins a Space without
this step (see store/spaces.py).

The invite link works without an account: it shows the Space, the role and
who invited, and someone whose email has no account sets a name and a
password there; the account is made only then, signed in, a member with the
invited role. An email that has an account signs in and joins with one
button (no second account). The link is its token: single use, expiring,
revocable; wrong tokens are counted per address (`invite_limiter`, shared by
every process in scale-out mode) and answered 429 past the limit. The form
of a visitor without a session is CSRF-checked like the sign-in form: a
token in the form that must match a SameSite=Strict cookie."""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from tether.cloud import auth, space_ops
from tether.cloud.auth import Principal
from tether.cloud.client import client_address
from tether.cloud.limits import Limiter, LogLimiter, address_key
from tether.cloud.limits import run as run_limit
from tether.cloud.models import SpaceInvitation, utcnow
from tether.cloud.secrets import aware, hash_password, iso
from tether.cloud.store import spaces as space_store
from tether.cloud.store import users as user_store
from tether.cloud.web.account import MIN_PASSWORD
from tether.cloud.web.common import (
    UiError,
    field,
    form_csrf_ok,
    form_of,
    in_db,
    my_spaces,
    new_login_csrf,
    page,
    posted,
    redirect,
    render,
    set_form_csrf,
    signed_in,
)

log = logging.getLogger("tether.cloud.spaces")

# Wrong invite-link tokens per address (IPv6 per /64) per minute. The tokens
# carry 256 random bits, so this bounds load and noise, not a real chance.
WRONG_LINKS_PER_MINUTE = 10
INVITE_CSRF_COOKIE = "tether_invite_csrf"
_log_limit = LogLimiter(3, 60.0, time.monotonic)
NOT_VALID = (
    "This invitation link is not valid. Check that you opened the whole link "
    "(it is long), or ask an admin of the Space for a new one."
)


def pending(s: Session, user: Principal) -> list[dict[str, Any]]:
    """What the home page lists: the invitations the user can accept now."""
    out = []
    for inv in space_store.invitations_for(s, user.email, utcnow()):
        space_name, inviter = space_store.invitation_parties(s, inv)
        out.append(
            {
                "id": inv.id,
                "space_name": space_name,
                "role": inv.role,
                "invited_by": inviter or "a former member",
                "expires_at": iso(inv.expires_at),
            }
        )
    return out


@page
async def invitations_page(request: Request) -> Response:
    user = await signed_in(request)

    def load(s: Session) -> dict[str, Any]:
        return {
            "title": "Invitations",
            "user": user,
            "csrf": user.csrf or "",
            "invitations": pending(s, user),
            "spaces": my_spaces(s, user.user_id),
        }

    ctx = await in_db(request, load)
    if request.query_params.get("done") == "declined":
        ctx["flash"] = "Invitation declined."
    return render(request, "invitations.html", ctx)


async def _answer(request: Request, accepting: bool) -> str:
    """Accept or decline the invitation in the path; its Space's id."""
    iid = request.path_params["invitation_id"]

    def run(s: Session, user: Principal, _form: FormData) -> str:
        inv = space_store.invitation_for(s, iid, user.email)
        try:
            return space_ops.answer_invitation(s, user, inv, accepting).space_id
        except space_store.InvitationClosed as exc:
            status, _, message = space_ops.closed(exc)
            raise UiError(status, message) from None

    return await posted(request, run)


@page
async def accept(request: Request) -> Response:
    return redirect(f"/spaces/{await _answer(request, True)}")


@page
async def decline(request: Request) -> Response:
    await _answer(request, False)
    return redirect("/invitations?done=declined")


# --- the invite link -------------------------------------------------------------


def _link_info(s: Session, inv: SpaceInvitation, now: dt.datetime) -> dict[str, Any]:
    space_name, inviter = space_store.invitation_parties(s, inv)
    return {
        "state": space_store.invitation_state(inv, now),
        "email": inv.email,
        "role": inv.role,
        "space_id": inv.space_id,
        "space_name": space_name,
        "invited_by": inviter or "a former member",
        "expires_at": iso(inv.expires_at),
        "expires_text": aware(inv.expires_at).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "has_account": user_store.by_email(s, inv.email) is not None,
    }


def _closed_message(info: dict[str, Any]) -> tuple[int, str]:
    """What the link's page says when the invitation can no longer be used."""
    space = info["space_name"] or "the Space"
    if info["state"] == "expired":
        return 410, (
            f"This invitation link expired at {info['expires_text']}. "
            f"Ask {info['invited_by']} or another admin of {space} to invite you again."
        )
    if info["state"] == "revoked":
        return 410, (
            f"This invitation link was revoked by an admin of {space} (or replaced by a "
            "newer invitation). Ask them for a new link."
        )
    if info["state"] == "accepted":
        return 409, (
            "This invitation link was already used; it works only once. If you used it, "
            f"sign in with {info['email']}; otherwise ask an admin of {space} for a new one."
        )
    return 409, f"This invitation was declined. Ask an admin of {space} to invite you again."


def _limiter(request: Request) -> Limiter:
    limiter: Limiter = request.app.state.invite_limiter
    return limiter


async def _count_attempt(request: Request) -> int:
    """Count one link attempt of this address now (taken back by `_not_a_guess`
    when the token is right); 0, or the seconds to wait past the limit."""
    limiter, key = _limiter(request), address_key(client_address(request))
    wait = await run_limit(limiter.blocking, limiter.hit, key)
    if wait:
        allowed, left_out = _log_limit.allow(key)
        if allowed:  # a flood of guesses writes a few lines, not one each
            log.warning(
                "invite link: too many wrong tokens from %s (%d such lines left out)",
                key,
                left_out,
            )
    return wait


async def _not_a_guess(request: Request) -> None:
    limiter = _limiter(request)
    await run_limit(limiter.blocking, limiter.undo, address_key(client_address(request)))


def _limited(request: Request, wait: int) -> Response:
    message = f"Too many wrong invitation links from your address; try again in {wait} s."
    response = render(request, "error.html", {"status": 429, "message": message}, 429)
    response.headers["Retry-After"] = str(wait)
    return response


async def _open_link(request: Request, token: str) -> dict[str, Any] | Response:
    """The link's invitation, counted against the rate limit; a page for a
    wrong token; UiError for one that can no longer be used."""
    wait = await _count_attempt(request)
    if wait:
        return _limited(request, wait)

    def load(s: Session) -> dict[str, Any] | None:
        inv = space_store.invitation_by_link(s, token)
        return None if inv is None else _link_info(s, inv, utcnow())

    info = await in_db(request, load)
    if info is None:
        return render(request, "error.html", {"status": 404, "message": NOT_VALID}, 404)
    await _not_a_guess(request)
    if info["state"] != "pending":
        raise UiError(*_closed_message(info))
    return info


def _invite_page(
    request: Request,
    token: str,
    info: dict[str, Any],
    user: Principal | None,
    error: str = "",
    status: int = 200,
    name: str = "",
) -> Response:
    csrf = new_login_csrf()
    ctx = {
        **info,
        "title": f"Join {info['space_name']}",
        "user": user if user is not None and user.via == "session" else None,
        "csrf": (user.csrf or "") if user is not None else "",
        "invite_csrf": csrf,
        "link": f"/invite/{token}",
        "error": error,
        "name": name,
        "min_password": MIN_PASSWORD,
    }
    response = render(request, "invite.html", ctx, status)
    set_form_csrf(request, response, INVITE_CSRF_COOKIE, csrf, "/invite")
    return response


@page
async def link_page(request: Request) -> Response:
    """GET /invite/{token}: who invited whom to which Space, and how to join."""
    token = request.path_params["token"]
    info = await _open_link(request, token)
    if isinstance(info, Response):
        return info
    return _invite_page(request, token, info, await auth.current_user(request))


@page
async def link_join(request: Request) -> Response:
    """POST /invite/{token}: join, with a new account or the signed-in one."""
    token = request.path_params["token"]
    info = await _open_link(request, token)
    if isinstance(info, Response):
        return info
    user = await auth.current_user(request)
    if info["has_account"]:
        return await _join_signed_in(request, token, info, user)
    form = await request.form()
    if not form_csrf_ok(request, form, "invite_csrf", INVITE_CSRF_COOKIE):
        msg = "This form expired or did not come from this site; please try again."
        return _invite_page(request, token, info, user, msg, 403)
    name = field(form, "name")
    password, again = str(form.get("password") or ""), str(form.get("again") or "")
    problem = None
    try:
        space_store.check_name(name, "your")
    except ValueError as exc:
        problem = str(exc).capitalize() + "."
    if len(password) < MIN_PASSWORD:
        problem = f"The password must have at least {MIN_PASSWORD} characters."
    elif password != again:
        problem = "The two passwords differ; type the same one twice."
    if problem:
        return _invite_page(request, token, info, user, problem, 400, name)
    # Argon2 outside the write transaction (it is slow on purpose).
    hashed = await run_in_threadpool(hash_password, password)
    days = request.app.state.settings.session_days

    def join(s: Session) -> tuple[str, str]:
        inv = space_store.invitation_by_link(s, token, lock=True)
        if inv is None:
            raise UiError(404, NOT_VALID)
        try:
            new = space_ops.join_with_new_account(s, inv, name, hashed)
        except space_store.InvitationClosed:
            raise UiError(*_closed_message(_link_info(s, inv, utcnow()))) from None
        except space_store.AccountExists:
            raise UiError(
                409,
                f"An account with {inv.email} exists now; sign in with it and open "
                "this link again to join.",
            ) from None
        sid, _ = user_store.create_session(s, new, days)
        return sid, inv.space_id

    sid, space_id = await in_db(request, join, write=True)
    response = redirect(f"/spaces/{space_id}")
    auth.set_session_cookie(request, response, sid)
    response.delete_cookie(INVITE_CSRF_COOKIE, path="/invite")
    return response


async def _join_signed_in(
    request: Request, token: str, info: dict[str, Any], user: Principal | None
) -> Response:
    """The invited email has an account: it joins once signed in as that email."""
    if user is None or user.via != "session" or user.email != info["email"]:
        raise UiError(
            403,
            f"This invitation is for {info['email']}, which has an account here: sign in "
            "with it, then open the invitation link again.",
        )
    await form_of(request, user)  # the session's CSRF token

    def accept(s: Session) -> str:
        inv = space_store.invitation_by_link(s, token, lock=True)
        if inv is None:
            raise UiError(404, NOT_VALID)
        try:
            return space_ops.answer_invitation(s, user, inv, True).space_id
        except space_store.InvitationClosed:
            raise UiError(*_closed_message(_link_info(s, inv, utcnow()))) from None

    return redirect(f"/spaces/{await in_db(request, accept, write=True)}")
