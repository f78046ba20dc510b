"""The link state machine, one per connection and side, with no I/O.

The transport hands each received WebSocket message to `receive_data()` and
writes whatever `send()` returns. The machine checks that each side sends only
what it may, in order:

    agent:  IDLE --send Hello--> HELLO_SENT --recv HelloAck--> READY
    cloud:  IDLE --recv Hello--> HELLO_RECEIVED --send HelloAck--> READY
    both:   any --Goodbye/Disconnect/protocol error--> CLOSING

A fault in what the peer sent never raises: it yields a `CloseLink` event
with the close code and reason the transport should close with. A fault in
what this side tries to send raises `LocalProtocolError` (a bug here).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from tether.protocol.frames import (
    MAX_FRAME_SIZE,
    AlertTransition,
    ChildrenUpdate,
    Disconnect,
    ErrorFrame,
    Frame,
    Goodbye,
    Hello,
    HelloAck,
    NodeUpdate,
    ProtocolError,
    QueryRequest,
    QueryResponse,
    Reload,
    decode,
    encode,
)

# WebSocket close codes used on the link.
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_POLICY: Final = 1008
CLOSE_TOO_BIG: Final = 1009
CLOSE_SERVICE_RESTART: Final = 1012
CLOSE_PROTOCOL_ERROR: Final = 4000
CLOSE_TOKEN_INVALID: Final = 4001
CLOSE_NODE_REMOVED: Final = 4003
CLOSE_OVER_BUDGET: Final = 4008
CLOSE_REPLACED: Final = 4009
# The node's identity is live on another host (another machine-id): the Cloud
# keeps that link and refuses this one. Terminal: the copy needs its own id.
CLOSE_CLONE: Final = 4010
# After 4008 the agent stays away at least this long (the Disconnect before the
# close says how long; this is the floor when it did not arrive). The Cloud
# refuses the node's link with HTTP 429 until then.
OVER_BUDGET_RECONNECT_SECONDS: Final = 60.0

CLOSE_REASONS: Final[dict[int, str]] = {
    CLOSE_NORMAL: "normal close",
    CLOSE_GOING_AWAY: "going away",
    CLOSE_POLICY: "policy violation",
    CLOSE_TOO_BIG: "frame too big",
    CLOSE_SERVICE_RESTART: "Cloud restarting",
    CLOSE_PROTOCOL_ERROR: "protocol error",
    CLOSE_TOKEN_INVALID: "link token invalid or already used",
    CLOSE_NODE_REMOVED: "node removed or its credential revoked",
    CLOSE_OVER_BUDGET: "over budget: the node sent more frames than the Cloud accepts",
    CLOSE_REPLACED: "replaced by a newer connection with the same node identity",
    CLOSE_CLONE: "this node's identity is live on another host (a copied machine or cloud.d)",
}

# Close codes after which the agent must stop retrying: only a human can fix
# them (re-claim). Every other close is transient and retried with backoff.
TERMINAL_CLOSE_CODES: Final = frozenset({CLOSE_NODE_REMOVED, CLOSE_CLONE})


def is_terminal_close(code: int) -> bool:
    return code in TERMINAL_CLOSE_CODES


def describe_close(code: int) -> str:
    return CLOSE_REASONS.get(code, f"close code {code}")


class Role(enum.Enum):
    AGENT = "agent"
    CLOUD = "cloud"


class LinkState(enum.Enum):
    IDLE = "idle"
    HELLO_SENT = "hello_sent"
    HELLO_RECEIVED = "hello_received"
    READY = "ready"
    CLOSING = "closing"


class LocalProtocolError(Exception):
    """This side tried to send something the protocol does not allow now."""


@dataclass(frozen=True)
class CloseLink:
    """The transport should close the WebSocket with this code and reason."""

    code: int
    reason: str


@dataclass(frozen=True)
class FrameReceived:
    frame: Frame


Event = FrameReceived | CloseLink


def _allowed(role: Role, state: LinkState) -> tuple[type, ...]:
    """Which frames `role` may send while in `state`."""
    if role is Role.AGENT:
        return {
            LinkState.IDLE: (Hello,),
            LinkState.HELLO_SENT: (Goodbye, ErrorFrame),
            LinkState.READY: (
                NodeUpdate,
                AlertTransition,
                QueryResponse,
                ErrorFrame,
                Goodbye,
                ChildrenUpdate,  # only to a Cloud whose HelloAck offered "children"
            ),
        }.get(state, ())
    return {
        LinkState.HELLO_RECEIVED: (HelloAck, Disconnect, ErrorFrame),
        LinkState.READY: (QueryRequest, Disconnect, Reload, ErrorFrame),
    }.get(state, ())


def _peer_state(role: Role, state: LinkState) -> LinkState:
    """The state the peer is in when we are in `state`, for receive checks."""
    if role is Role.CLOUD:
        # The agent has sent Hello (IDLE here means its Hello is what arrives).
        return {LinkState.IDLE: LinkState.IDLE, LinkState.READY: LinkState.READY}.get(
            state, LinkState.HELLO_SENT
        )
    return {LinkState.HELLO_SENT: LinkState.HELLO_RECEIVED}.get(state, state)


class LinkConnection:
    """One side of one link. Not thread-safe; one per WebSocket."""

    def __init__(self, role: Role, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self.role = role
        self.state = LinkState.IDLE
        self.max_frame_size = max_frame_size
        self.hello: Hello | None = None
        self.session_id: str | None = None
        self.keepalive_seconds: float | None = None
        self.close_reason: CloseLink | None = None
        self.stale_responses = 0
        self._pending: set[int] = set()
        self._next_id = 1

    # -- sending -----------------------------------------------------------

    def send(self, frame: Frame) -> bytes:
        allowed = _allowed(self.role, self.state)
        if not isinstance(frame, allowed):
            raise LocalProtocolError(
                f"{self.role.value} may not send {type(frame).__name__} in state {self.state.value}"
            )
        if isinstance(frame, QueryRequest):
            if frame.id in self._pending:
                raise LocalProtocolError(f"query id {frame.id} is already in flight")
            self._pending.add(frame.id)
        self._advance(frame, sent=True)
        return encode(frame)

    def _advance(self, frame: Frame, *, sent: bool) -> None:
        """The state a frame moves this side to: one rule for sent and received."""
        if isinstance(frame, Hello):
            self.hello = frame
            self.state = LinkState.HELLO_SENT if sent else LinkState.HELLO_RECEIVED
        elif isinstance(frame, HelloAck):
            self.session_id = frame.session_id
            self.keepalive_seconds = frame.keepalive_seconds
            self.state = LinkState.READY
        elif isinstance(frame, Goodbye | Disconnect):
            self.state = LinkState.CLOSING

    def next_query_id(self) -> int:
        """A correlation id not in flight on this link (Cloud side)."""
        while self._next_id in self._pending:
            self._next_id += 1
        qid = self._next_id
        self._next_id = self._next_id + 1 if self._next_id < 2**62 else 1
        return qid

    def cancel_query(self, query_id: int) -> None:
        """Forget a query that timed out; a late answer is then dropped."""
        self._pending.discard(query_id)

    @property
    def pending_queries(self) -> frozenset[int]:
        return frozenset(self._pending)

    # -- receiving ---------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Process one received WebSocket message."""
        if self.state is LinkState.CLOSING:
            return []
        try:
            frame = decode(data, self.max_frame_size)
        except ProtocolError as exc:
            return [self._fail(exc.close_code, exc.reason)]
        peer: Role = Role.CLOUD if self.role is Role.AGENT else Role.AGENT
        allowed = _allowed(peer, _peer_state(self.role, self.state))
        if not isinstance(frame, allowed):
            return [
                self._fail(
                    CLOSE_PROTOCOL_ERROR,
                    f"unexpected {type(frame).__name__} from {peer.value} "
                    f"in state {self.state.value}",
                )
            ]
        if isinstance(frame, QueryResponse) or (
            isinstance(frame, ErrorFrame) and frame.id is not None and self.role is Role.CLOUD
        ):
            qid = frame.id
            assert qid is not None
            if qid not in self._pending:
                # Answered after the Cloud gave up on it: normal, not a fault.
                self.stale_responses += 1
                return []
            self._pending.discard(qid)
        self._advance(frame, sent=False)
        return [FrameReceived(frame)]

    def _fail(self, code: int, reason: str) -> CloseLink:
        self.state = LinkState.CLOSING
        self._pending.clear()
        # WebSocket close reasons are limited to 123 bytes.
        event = CloseLink(code, reason.encode()[:123].decode(errors="ignore"))
        self.close_reason = event
        return event
