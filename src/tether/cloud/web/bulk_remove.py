"""The Remove nodes page: a Space manager picks a filter (the Nodes list's,
plus label and "not seen for N days"), sees which nodes match, and removes
them in one go (tether.cloud.bulk_remove)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from tether.cloud import bulk_remove
from tether.cloud.auth import Principal
from tether.cloud.models import Space, utcnow
from tether.cloud.web.common import UiError, page, posted, redirect, signed_in, space_page
from tether.protocol.states import NodeState


def _params(items: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name in bulk_remove.FILTERS:
        values = [str(v).strip() for v in items.getlist(name) if str(v).strip()]
        if values:
            out[name] = values
    return out


@page
async def remove_page(request: Request) -> Response:
    user = await signed_in(request)
    params = _params(request.query_params)
    f = None
    if params:
        try:
            f = bulk_remove.parse(params)
        except ValueError as exc:
            raise UiError(400, str(exc)) from None

    def fill(s: Session, space: Space, _role: str) -> dict[str, Any]:
        found = bulk_remove.matching(s, space.id, f, utcnow(), 501) if f is not None else []
        return {
            "title": f"Remove nodes of {space.name}",
            "params": params,
            "states": [st.value for st in NodeState],
            "matches": [
                {"id": n.id, "hostname": n.hostname, "state": n.state} for n in found[:500]
            ],
            "more": len(found) > 500,
            "removed": request.query_params.get("removed"),
        }

    return await space_page(request, user, "bulk_remove.html", fill, {}, needed="manager")


@page
async def remove_nodes(request: Request) -> Response:
    sid = request.path_params["space_id"]

    def run(s: Session, user: Principal, form: FormData) -> list[str]:
        f = bulk_remove.parse(_params(form))
        out = bulk_remove.run(s, user, sid, f, utcnow(), dry_run=False)
        return [n["id"] for n in out["nodes"]]

    removed = await posted(request, run)
    for node_id in removed:  # committed: their live links go now (4003)
        await request.app.state.links.close_node(node_id)
    return redirect(f"/spaces/{sid}/nodes/remove?removed={len(removed)}")
