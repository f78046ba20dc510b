"""Node presence on the Cloud: the states a node is in and the cause codes
recorded with each change (`detail.cause_code` of a node's state events, and
presence events between Cloud processes).

The rule that moves a node between them (only the close of its current
session takes it offline) is the Cloud's: tether.cloud.link.presence.
"""

from __future__ import annotations

import enum


class NodeState(enum.StrEnum):
    """Stored in `nodes.state` and shown by the API as these strings."""

    UNSEEN = "unseen"  # claimed, never connected
    LIVE = "live"
    OFFLINE = "offline"


# Causes recorded with each change.
CAUSE_CONNECTED = "connected"
CAUSE_REPLACED = "replaced"  # a second connection with the same identity took over
CAUSE_CLOSED = "closed"
CAUSE_KEEPALIVE = "keepalive_timeout"
CAUSE_GOODBYE = "goodbye"  # graceful stop: see reason / expected_back_seconds
CAUSE_CLOUD_CLOSED = "cloud_closed"
CAUSE_REMOVED = "removed"
