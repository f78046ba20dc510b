"""The invitee's side of invitations: the list on the home page, Accept and
Decline. Nobody joins a Space without this step (see store/spaces.py)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from tether.cloud import space_ops
from tether.cloud.auth import Principal
from tether.cloud.models import utcnow
from tether.cloud.secrets import iso
from tether.cloud.store import spaces as space_store
from tether.cloud.web.common import (
    UiError,
    in_db,
    my_spaces,
    page,
    posted,
    redirect,
    render,
    signed_in,
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
