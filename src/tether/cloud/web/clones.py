"""The node page's clone conflict: its notice (`templates/_clone_conflict.html`)
and the admin's two buttons (keep the current host, or let the refused one
take over on its next link), posted here; tether.cloud.link.clones decides."""

from __future__ import annotations

from sqlalchemy.orm import Session
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from tether.cloud import space_ops
from tether.cloud.auth import Principal
from tether.cloud.link import clones
from tether.cloud.store import spaces as space_store
from tether.cloud.web.common import UiError, field, page, posted, redirect


@page
async def resolve(request: Request) -> Response:
    sid, nid = request.path_params["space_id"], request.path_params["node_id"]

    def change(s: Session, user: Principal, form: FormData) -> None:
        space, _ = space_store.require_role(s, sid, user.user_id, "admin")
        node = space_ops.node(s, space, nid)
        try:
            clones.resolve(s, node, field(form, "action"), user.email)
        except clones.NoConflict as exc:
            raise UiError(409, str(exc)) from None

    await posted(request, change)
    return redirect(f"/spaces/{sid}/nodes/{nid}")
