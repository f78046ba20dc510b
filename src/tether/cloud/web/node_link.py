"""`/nodes/{node_id}`: the node's page when only its id is known (what
kickstart.sh prints after a claim: a node does not know its Space's id).

Redirects a member of the node's Space to `/spaces/{space}/nodes/{node}`;
anyone else gets the same 404 page as for a node that does not exist.
"""

from __future__ import annotations

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response

from tether.cloud.models import Node
from tether.cloud.web.common import UiError, in_db, member_space, page, redirect, signed_in


@page
async def node_by_id(request: Request) -> Response:
    user = await signed_in(request)
    nid = request.path_params["node_id"].lower()

    def load(s: Session) -> str | None:
        node = s.get(Node, nid)
        if node is None:
            return None
        member_space(s, user, node.space_id)  # a non-member gets the 404 page
        return f"/spaces/{node.space_id}/nodes/{node.id}"

    target = await in_db(request, load)
    if target is None:
        raise UiError(404, "There is no such node.")
    return redirect(target)
