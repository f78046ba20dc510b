"""The Cloud's end of the link (the ACLK), one module per idea:

- `endpoint`: `wss://CLOUD/aclk`, the live-link table (`LiveLink`) and each
  link's receive loop;
- `presence`: the session rule (only the close of the current session takes a
  node offline) and every presence write: connects, closes, causes, bulk
  offlining;
- `processes`: the heartbeats of Cloud processes and which of them are dead;
- `sweeper`: the periodic sweep (heartbeat, takeover, removal closes, history
  pruning, idle budgets);
- `service`: `LinkService`, all of the above as one object (app.state.links).

The REST route that asks a node to disconnect is in tether.cloud.api.
"""

from __future__ import annotations

from starlette.routing import BaseRoute, WebSocketRoute

from tether.cloud.link.endpoint import LiveLink, aclk
from tether.cloud.link.service import LinkService
from tether.protocol import auth

__all__ = ["LinkService", "LiveLink", "aclk", "routes"]


def routes() -> list[BaseRoute]:
    return [WebSocketRoute(auth.LINK_PATH, aclk)]
