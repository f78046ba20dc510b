"""The invitee's side of invitations: the list on the home page, Accept and
Decline. Nobody joins a Space without this step (see store/spaces.py)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response

from tether.cloud.auth import Principal
from tether.cloud.models import Space, SpaceInvitation, User, utcnow
from tether.cloud.secrets import iso
from tether.cloud.store import spaces as space_store
from tether.cloud.web.common import UiError, form_of, in_db, page, redirect, render, signed_in

CLOSED = {
    "expired": (410, "This invitation has expired."),
    "revoked": (410, "A Space admin withdrew or replaced this invitation."),
    "accepted": (409, "You already accepted this invitation."),
    "declined": (409, "You already declined this invitation."),
}


def pending(s: Session, user: Principal) -> list[dict[str, Any]]:
    """What the home page lists: the invitations the user can accept now."""
    out = []
    for inv in space_store.invitations_for(s, user.email, utcnow()):
        space = s.get(Space, inv.space_id)
        inviter = s.get(User, inv.invited_by) if inv.invited_by else None
        out.append(
            {
                "id": inv.id,
                "space_name": space.name if space else "",
                "role": inv.role,
                "invited_by": inviter.email if inviter else "a former member",
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
            "spaces": [
                {"id": sp.id, "name": sp.name, "role": r}
                for sp, r in space_store.spaces_of(s, user.user_id)
            ],
        }

    ctx = await in_db(request, load)
    if request.query_params.get("done") == "declined":
        ctx["flash"] = "Invitation declined."
    return render(request, "invitations.html", ctx)


def _mine(s: Session, user: Principal, invitation_id: str) -> SpaceInvitation:
    inv = space_store.invitation_for(s, invitation_id, user.email)
    if inv is None:
        raise UiError(
            404,
            f"There is no invitation for {user.email} by that link. "
            "An invitation counts only for the email it was sent to.",
        )
    return inv


def _closed(exc: space_store.InvitationClosed) -> UiError:
    status, what = CLOSED[exc.state]
    return UiError(
        status, what + " Ask an admin of the Space to invite you again if you want to join."
    )


@page
async def accept(request: Request) -> Response:
    user = await signed_in(request)
    await form_of(request, user)
    iid = request.path_params["invitation_id"]

    def run(s: Session) -> str:
        inv = _mine(s, user, iid)
        me = s.get(User, user.user_id)
        assert me is not None
        try:
            space_store.accept(s, inv, me, utcnow())
        except space_store.InvitationClosed as exc:
            raise _closed(exc) from None
        return inv.space_id

    space_id = await in_db(request, run, write=True)
    return redirect(f"/spaces/{space_id}")


@page
async def decline(request: Request) -> Response:
    user = await signed_in(request)
    await form_of(request, user)
    iid = request.path_params["invitation_id"]

    def run(s: Session) -> None:
        try:
            space_store.decline(s, _mine(s, user, iid), utcnow())
        except space_store.InvitationClosed as exc:
            raise _closed(exc) from None

    await in_db(request, run, write=True)
    return redirect("/invitations?done=declined")
