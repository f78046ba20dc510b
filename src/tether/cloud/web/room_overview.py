"""The room overview: composite charts across every live node of a War Room
(CPU, load, memory, network, disk), drawn from tether.cloud.composite's
answers, the nodes that missed named, each node one click away."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response

from tether.cloud import space_ops
from tether.cloud.composite import COMPOSITES
from tether.cloud.web.common import in_db, member_space, nav, page, render, signed_in
from tether.cloud.web.pages import RANGES, chosen_range  # the node page's time ranges


@page
async def overview_page(request: Request) -> Response:
    user = await signed_in(request)
    sid, rid = request.path_params["space_id"], request.path_params["room_id"]
    range_key, range_seconds = chosen_range(request)

    def load(s: Session) -> dict[str, Any]:
        space, role = member_space(s, user, sid)
        room = space_ops.room(s, space, rid)
        ctx = nav(s, user, space, role)
        ctx.update(
            title=f"{room.name} overview",
            room={"id": room.id, "name": room.name, "is_all_nodes": room.is_all_nodes},
            composites=[
                {"key": k, "title": c.title, "units": c.units} for k, c in COMPOSITES.items()
            ],
            range_key=range_key,
            range_seconds=range_seconds,
            ranges=list(RANGES),
        )
        return ctx

    return render(request, "room_overview.html", await in_db(request, load))
