"""Manage Space: members, invitations and roles, War Rooms, the claiming token."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from tether.cloud import invite_mail, space_ops
from tether.cloud.auth import Principal
from tether.cloud.models import Space, utcnow
from tether.cloud.secrets import SecretBox, aware, iso
from tether.cloud.store import claim_tokens
from tether.cloud.store import spaces as space_store
from tether.cloud.web.common import (
    Post,
    UiError,
    action,
    field,
    page,
    posted,
    redirect,
    signed_in,
    space_page,
)
from tether.cloud.web.connect import cloud_url

FLASH = {
    "invitation-revoked": "Invitation revoked: its link no longer works.",
    "member-changed": "Role changed.",
    "member-removed": "Member removed.",
    "room-created": "War Room created.",
    "room-renamed": "War Room renamed.",
    "room-deleted": "War Room deleted; its nodes stay in the Space.",
    "token-rotated": "Claiming token rotated. The old token no longer works; "
    "nodes already connected are not affected.",
    "space-renamed": "Space renamed.",
}


# How long an invitation made on the page lasts (the API takes any "expires_in").
INVITE_EXPIRY = {"1 day": 86400, "7 days": 7 * 86400, "30 days": 30 * 86400}


@page
async def manage_page(request: Request) -> Response:
    return await _manage(request, {})


async def _manage(request: Request, extra: dict[str, Any]) -> Response:
    user = await signed_in(request)
    box: SecretBox = request.app.state.secret_box

    def fill(s: Session, space: Space, role: str) -> dict[str, Any]:
        ctx: dict[str, Any] = {"title": f"Manage {space.name}", **extra}
        ctx["invite_expiry"] = list(INVITE_EXPIRY)
        mail = invite_mail.smtp_of(s, box, space.id) if role == "admin" else None
        ctx["invite_mail_channel"] = mail.channel_name if mail else None
        ctx["members"] = [
            {
                "user_id": u.id,
                "email": u.email,
                "name": u.name,
                "role": r,
                "is_me": u.id == user.user_id,
            }
            for u, r in space_store.members(s, space.id)
        ]
        ctx["roles"] = list(space_store.ROLES)
        now = utcnow()
        ctx["invitations"] = [
            {
                "id": i.id,
                "email": i.email,
                "role": i.role,
                "state": space_store.invitation_state(i, now),
                "expires_at": iso(i.expires_at),
                "invited_by": space_store.invitation_parties(s, i)[1] or "a former member",
            }
            for i in (space_store.invitations_of_space(s, space.id) if role == "admin" else [])
        ]
        token = None
        if role == "admin":  # members and managers never see even the token's prefix
            row = claim_tokens.active(s, space.id)
            if row is not None:
                token = {
                    "prefix": row.prefix,
                    "created_at": iso(row.created_at),
                    "expires_at": iso(row.expires_at),
                }
        ctx["token"] = token
        return ctx

    return await space_page(request, user, "manage.html", fill, FLASH)


BACK = "/spaces/{space_id}/manage?done="


@page
async def add_member(request: Request) -> Response:
    """Invite by email (the same answer whether or not the account exists);
    the page shows the invite link, once: only its hash is kept. With
    "email_link" it is also sent through the Space's email channel."""
    sid = request.path_params["space_id"]
    box: SecretBox = request.app.state.secret_box

    def make(s: Session, user: Principal, form: FormData) -> dict[str, Any]:
        expiry = field(form, "expires") or "7 days"
        if expiry not in INVITE_EXPIRY:
            raise UiError(400, f"Choose an expiry: {', '.join(INVITE_EXPIRY)}.")
        email, role = field(form, "email"), field(form, "role") or "member"
        try:
            token, inv = space_ops.invite(s, user, sid, email, role, INVITE_EXPIRY[expiry])
        except space_store.AlreadyMember as exc:
            raise UiError(409, f"{str(exc).capitalize()}; change their role in the list.") from None
        space_name, inviter = space_store.invitation_parties(s, inv)
        return {
            "token": token,
            "prefix": inv.prefix,
            "email": inv.email,
            "role": inv.role,
            "space_name": space_name,
            "inviter": inviter or user.email,
            "expires_at": aware(inv.expires_at).strftime("%Y-%m-%d %H:%M UTC"),
            "smtp": invite_mail.smtp_of(s, box, sid) if field(form, "email_link") else None,
        }

    made = await posted(request, make)
    link = space_ops.invite_url(cloud_url(request), made["token"])
    extra: dict[str, Any] = {"invite_link": link, "invite_email": made["email"]}
    smtp: invite_mail.Smtp | None = made["smtp"]
    if smtp is not None:  # after the commit, outside any transaction
        failed = await run_in_threadpool(
            invite_mail.send,
            smtp,
            made["prefix"],
            made["email"],
            made["space_name"],
            made["inviter"],
            made["role"],
            link,
            made["expires_at"],
        )
        extra["invite_mailed"] = (
            f"Also emailed to {made['email']} through {smtp.channel_name}."
            if failed is None
            else f"Could not email it through {smtp.channel_name} ({failed}); "
            "send the link yourself."
        )
    return await _manage(request, extra)


def _rotate(p: Post) -> None:
    if p.field("confirm") != "yes":
        raise UiError(400, "Tick the confirmation box to rotate the claiming token.")
    space_ops.rotate_claim_token(p.s, p.box, p.user, p.sid)


revoke_invitation = action(
    BACK + "invitation-revoked",
    lambda p: space_ops.revoke_invitation(p.s, p.user, p.sid, p.param("invitation_id")),
)
change_member = action(
    BACK + "member-changed",
    lambda p: space_ops.change_member(p.s, p.user, p.sid, p.param("user_id"), p.field("role")),
)
remove_member = action(
    BACK + "member-removed",
    lambda p: space_ops.remove_member(p.s, p.user, p.sid, p.param("user_id")),
)
rename_room = action(
    BACK + "room-renamed",
    lambda p: space_ops.rename_room(p.s, p.user, p.sid, p.param("room_id"), p.field("name")),
)
delete_room = action(
    BACK + "room-deleted",
    lambda p: space_ops.delete_room(p.s, p.user, p.sid, p.param("room_id")),
)
rename_space = action(
    BACK + "space-renamed",
    lambda p: space_ops.rename_space(p.s, p.user, p.sid, p.field("name")),
)
rotate_token = action(BACK + "token-rotated", _rotate)


@page
async def create_room(request: Request) -> Response:
    """Goes to the new room (its id is known only once it is made)."""
    sid = request.path_params["space_id"]
    room = await posted(
        request, lambda s, user, form: space_ops.create_room(s, user, sid, field(form, "name"))
    )
    return redirect(f"/spaces/{sid}/rooms/{room.id}")
