"""The stream protocol (child agent to parent agent), with no I/O.

A child sends its metrics to a parent over one TCP connection (TLS unless both
sides say the network is trusted). The byte stream is a sequence of frames,
each a 4-byte big-endian length followed by that many bytes of MessagePack:
a map tagged by `t` (type) and `v` (version), as on the link. docs/protocol.md
("The stream protocol") is the specification.

    child:   IDLE --send Hello--> HELLO_SENT --recv Welcome--> STREAMING
    parent:  IDLE --recv Hello--> HELLO_RECEIVED --send Welcome--> STREAMING
    either:  Refused / Goodbye / a fault --> CLOSED

The parent trusts nothing the child sends: every string and list is bounded
by the decoder, a frame may not exceed `MAX_FRAME_SIZE`, samples must name a
chart defined on this connection with no more values than its dimensions, and
a child may define at most `MAX_CHARTS` charts. A fault in what the peer sent
never raises: it yields a `StreamFault` event; the transport closes. A fault in
what this side sends raises `LocalStreamError` (a bug here).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Annotated, Final, Literal

import msgspec

from tether.protocol.decoding import decode_versioned

STREAM_VERSION: Final = 1
MAX_FRAME_SIZE: Final = 1024 * 1024
MAX_CHARTS: Final = 5_000
MAX_DIMENSIONS: Final = 1_000  # per chart
# Timestamps are Unix seconds; anything past this is not a time.
MAX_TIME: Final = 2**40
HEADER = struct.Struct(">I")

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Text = Annotated[str, msgspec.Meta(max_length=1000)]
Short = Annotated[str, msgspec.Meta(max_length=200)]
Time = Annotated[int, msgspec.Meta(ge=0, le=MAX_TIME)]
Step = Annotated[int, msgspec.Meta(ge=1, le=3600)]


class _Frame(msgspec.Struct, tag_field="t", kw_only=True, forbid_unknown_fields=False):
    v: int = STREAM_VERSION


class Hello(_Frame, tag="hello", kw_only=True):
    """Child to parent, first: who the child is, and the parent's API key."""

    api_key: Annotated[str, msgspec.Meta(max_length=256)]
    machine_guid: Short
    hostname: Short
    boot_id: Short = ""
    agent_version: Short = ""
    os_name: Short = ""
    os_id: Short = ""
    os_version: Short = ""
    kernel_name: Short = ""
    kernel_version: Short = ""
    architecture: Short = ""
    update_every: Step = 1
    # The child's ring reaches back to this time: the most the parent can get back.
    oldest_t: Time = 0


class Welcome(_Frame, tag="welcome", kw_only=True):
    """Parent to child: accepted. Send charts, then samples after `resume_after`
    (the newest time the parent holds for this child; 0: none)."""

    resume_after: Time = 0


REFUSE_CODES = ("bad_api_key", "rate_limited", "too_many_children")


class Refused(_Frame, tag="refused", kw_only=True):
    """Parent to child: not accepted; the connection closes. `retry_after_seconds`
    is the floor of the child's reconnect delay."""

    code: Short
    text: Text = ""
    retry_after_seconds: Annotated[float, msgspec.Meta(ge=0, le=86_400)] = 60.0


class ChartDef(_Frame, tag="chart", kw_only=True):
    """Child to parent: a chart and its dimensions (ids and names, in the order
    samples carry their values). Sent before any sample of the chart; sent again
    when its dimensions change (then it replaces the definition)."""

    id: Id
    title: Text = ""
    units: Short = ""
    family: Short = ""
    context: Short = ""
    chart_type: Literal["line", "area", "stacked"] = "line"
    priority: Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31)] = 1000
    dimensions: Annotated[list[tuple[Id, Short]], msgspec.Meta(max_length=MAX_DIMENSIONS)]


class Samples(_Frame, tag="samples", kw_only=True):
    """Child to parent: the values collected at time `at`, per chart, in the
    chart's dimension order (None: a gap). `replay` marks values sent from the
    ring after a reconnect rather than just collected."""

    at: Time
    values: Annotated[
        dict[Id, Annotated[list[float | None], msgspec.Meta(max_length=MAX_DIMENSIONS)]],
        msgspec.Meta(max_length=MAX_CHARTS),
    ]
    replay: bool = False


class Goodbye(_Frame, tag="goodbye", kw_only=True):
    """Either side, before a clean close."""

    reason: Short = ""


Frame = Hello | Welcome | Refused | ChartDef | Samples | Goodbye
FRAME_TYPES: Final = (Hello, Welcome, Refused, ChartDef, Samples, Goodbye)

_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[Frame] = msgspec.msgpack.Decoder(Frame)


class StreamError(Exception):
    """A frame that breaks the protocol; `reason` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def encode(frame: Frame) -> bytes:
    """One frame with its length prefix, ready to write."""
    body = _encoder.encode(frame)
    return HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> Frame:
    """Decode one frame's body (no length prefix), raising StreamError."""
    return decode_versioned(
        _decoder,
        body,
        version=STREAM_VERSION,
        speaks="stream",
        error=StreamError,
        explain=lambda _, exc: f"malformed frame: {str(exc)[:200]}",
    )


class Role(enum.Enum):
    CHILD = "child"
    PARENT = "parent"


class StreamState(enum.Enum):
    IDLE = "idle"
    HELLO_SENT = "hello_sent"
    HELLO_RECEIVED = "hello_received"
    STREAMING = "streaming"
    CLOSED = "closed"


class LocalStreamError(Exception):
    """This side tried to send something the protocol does not allow now."""


@dataclass(frozen=True)
class FrameReceived:
    frame: Frame


@dataclass(frozen=True)
class StreamFault:
    """The peer broke the protocol: close the connection, log `reason`."""

    reason: str


Event = FrameReceived | StreamFault


def _may_send(role: Role, state: StreamState) -> tuple[type, ...]:
    if role is Role.CHILD:
        return {
            StreamState.IDLE: (Hello,),
            StreamState.HELLO_SENT: (Goodbye,),
            StreamState.STREAMING: (ChartDef, Samples, Goodbye),
        }.get(state, ())
    return {
        StreamState.HELLO_RECEIVED: (Welcome, Refused),
        StreamState.STREAMING: (Goodbye, Refused),
    }.get(state, ())


class StreamConnection:
    """One side of one stream connection: feed it bytes as they arrive with
    `receive_data()`, write what `send()` returns."""

    def __init__(self, role: Role, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self.role = role
        self.state = StreamState.IDLE
        self.max_frame_size = max_frame_size
        self.hello: Hello | None = None
        self.resume_after = 0
        # chart id -> number of dimensions, as defined on this connection.
        self.charts: dict[str, int] = {}
        self.fault: StreamFault | None = None
        self._buffer = bytearray()

    def send(self, frame: Frame) -> bytes:
        if not isinstance(frame, _may_send(self.role, self.state)):
            raise LocalStreamError(
                f"{self.role.value} may not send {type(frame).__name__} in state {self.state.value}"
            )
        if isinstance(frame, ChartDef):
            self.charts[frame.id] = len(frame.dimensions)
        self._advance(frame, sent=True)
        return encode(frame)

    def _advance(self, frame: Frame, *, sent: bool) -> None:
        """The state a frame moves this side to: one rule for sent and received."""
        if isinstance(frame, Hello):
            self.hello = frame
            self.state = StreamState.HELLO_SENT if sent else StreamState.HELLO_RECEIVED
        elif isinstance(frame, Welcome):
            self.resume_after = frame.resume_after
            self.state = StreamState.STREAMING
        elif isinstance(frame, Refused | Goodbye):
            self.state = StreamState.CLOSED

    def receive_data(self, data: bytes) -> list[Event]:
        """Take the next bytes of the stream; the events of every frame they complete."""
        if self.closed:
            return []
        self._buffer += data
        events: list[Event] = []
        while not self.closed and len(self._buffer) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._buffer)
            if size > self.max_frame_size:
                return [*events, self._fail(f"frame of {size} bytes exceeds the limit")]
            if len(self._buffer) < HEADER.size + size:
                break
            body = bytes(self._buffer[HEADER.size : HEADER.size + size])
            del self._buffer[: HEADER.size + size]
            events.append(self._receive_frame(body))
        return events

    @property
    def closed(self) -> bool:
        return self.state is StreamState.CLOSED

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held: at most max_frame_size + 4."""
        return len(self._buffer)

    def _receive_frame(self, body: bytes) -> Event:
        try:
            frame = decode_body(body)
        except StreamError as exc:
            return self._fail(exc.reason)
        peer = Role.PARENT if self.role is Role.CHILD else Role.CHILD
        peer_state = {
            (Role.PARENT, StreamState.IDLE): StreamState.IDLE,
            (Role.PARENT, StreamState.HELLO_RECEIVED): StreamState.HELLO_SENT,
            (Role.CHILD, StreamState.HELLO_SENT): StreamState.HELLO_RECEIVED,
        }.get((self.role, self.state), self.state)
        if not isinstance(frame, _may_send(peer, peer_state)):
            return self._fail(
                f"unexpected {type(frame).__name__} from the {peer.value} in state "
                f"{self.state.value}"
            )
        if isinstance(frame, ChartDef):
            ids = [d for d, _ in frame.dimensions]
            if len(set(ids)) != len(ids):
                return self._fail(f"chart {frame.id[:60]!r} repeats a dimension id")
            if frame.id not in self.charts and len(self.charts) >= MAX_CHARTS:
                return self._fail(f"more than {MAX_CHARTS} charts")
            self.charts[frame.id] = len(ids)
        elif isinstance(frame, Samples):
            for chart_id, values in frame.values.items():
                dims = self.charts.get(chart_id)
                if dims is None:
                    return self._fail(f"samples for undefined chart {chart_id[:60]!r}")
                if len(values) > dims:
                    return self._fail(
                        f"{len(values)} values for chart {chart_id[:60]!r} of {dims} dimensions"
                    )
        self._advance(frame, sent=False)
        return FrameReceived(frame)

    def _fail(self, reason: str) -> StreamFault:
        self.state = StreamState.CLOSED
        self._buffer.clear()
        self.fault = StreamFault(reason)
        return self.fault
