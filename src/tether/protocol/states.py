"""Node presence on the Cloud: unseen, live, offline, with causes and sessions.

Presence follows the live link table. Each connection gets a session id; only
the close of the *current* session can take a node offline, so the late close
of a replaced connection never marks a newer live one offline.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class NodeState(enum.StrEnum):
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


@dataclass(frozen=True)
class StateChange:
    old: NodeState
    new: NodeState
    session_id: str
    cause: str
    at: float
    detail: str = ""
    expected_back_seconds: float | None = None
    previous_session_id: str | None = None


class Presence:
    """The presence of one node, fed by connect and disconnect events."""

    def __init__(
        self,
        state: NodeState = NodeState.UNSEEN,
        session_id: str | None = None,
        since: float | None = None,
    ) -> None:
        self.state = state
        self.session_id = session_id
        self.since = since

    def on_connect(self, session_id: str, at: float, detail: str = "") -> StateChange:
        """A new link is up. If another session was live, this one replaces it."""
        old, previous = self.state, self.session_id
        replaced = old is NodeState.LIVE and previous is not None and previous != session_id
        self.state, self.session_id, self.since = NodeState.LIVE, session_id, at
        return StateChange(
            old,
            NodeState.LIVE,
            session_id,
            CAUSE_REPLACED if replaced else CAUSE_CONNECTED,
            at,
            detail,
            previous_session_id=previous if replaced else None,
        )

    def on_disconnect(
        self,
        session_id: str,
        cause: str,
        at: float,
        detail: str = "",
        expected_back_seconds: float | None = None,
    ) -> StateChange | None:
        """A link closed. None when it is not the current session (stale close)."""
        if self.state is not NodeState.LIVE or session_id != self.session_id:
            return None
        self.state, self.since = NodeState.OFFLINE, at
        return StateChange(
            NodeState.LIVE,
            NodeState.OFFLINE,
            session_id,
            cause,
            at,
            detail,
            expected_back_seconds,
        )
