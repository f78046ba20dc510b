"""The node lifecycle's REST routes (issue 13; docs/lifecycle.md):

- `POST /api/v1/auth/node/{claim_id}/rotate-key`: a node rotates its key
  (tether.cloud.key_rotation; docs/protocol.md §1a);
- `POST /api/v1/spaces/{space_id}/nodes/{node_id}/clone-conflict`
  `{"action": "keep" | "takeover"}`: an admin resolves a clone conflict
  (tether.cloud.link.clones); 409 `ErrNoConflict` without one.
"""

from __future__ import annotations

from typing import Any

from starlette.routing import Route

from tether.cloud import key_rotation, space_ops
from tether.cloud.api import Ctx, endpoint
from tether.cloud.errors import ApiError
from tether.cloud.link import clones
from tether.cloud.store import nodes as node_store


@endpoint
def resolve_clone_conflict(c: Ctx) -> Any:
    """Resolve the node's clone conflict (admin): keep the current host, or let
    the refused one take the identity over on its next link."""
    space = c.space("admin")
    node = space_ops.node(c.s, space, c.param("node_id"))
    action = c.body.get("action")
    if not isinstance(action, str):
        raise ValueError('Send JSON {"action": "keep"} or {"action": "takeover"}.')
    try:
        result = clones.resolve(c.s, node, action, c.user.email or "an admin")
    except clones.NoConflict as exc:
        raise ApiError(409, "ErrNoConflict", str(exc)) from None
    return {**result, "node": node_store.node_json(node)}


def routes() -> list[Route]:
    node = "/api/v1/spaces/{space_id}/nodes/{node_id}"
    return [
        *key_rotation.routes(),
        Route(node + "/clone-conflict", resolve_clone_conflict, methods=["POST"]),
    ]
