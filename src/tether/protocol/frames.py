"""The link's frames: versioned, typed msgspec Structs over MessagePack.

Every WebSocket binary message on the link carries exactly one frame. A frame
is a MessagePack map tagged by `t` (its type) and `v` (the protocol version).
Maps rather than arrays so a newer peer may add optional fields that an older
peer ignores; `v` changes only on incompatible changes and a frame with another
`v` is refused.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Annotated, Final, Literal

import msgspec

from tether.protocol.decoding import decode_versioned

PROTOCOL_VERSION: Final = 1
MAX_FRAME_SIZE: Final = 4 * 1024 * 1024
# Bodies above this are zlib-compressed inside the frame: per-message deflate is
# off on the link because it doubles the memory each idle connection costs.
COMPRESS_THRESHOLD: Final = 8 * 1024
# A compressed body may not inflate past this (guards against zip bombs); the
# Cloud's relay has its own, smaller cap (--relay-max-answer-mib).
MAX_BODY_SIZE: Final = 64 * 1024 * 1024
# Inflation proceeds in pieces of at most this many bytes.
INFLATE_PIECE: Final = 256 * 1024

Encoding = Literal["identity", "zlib"]


class ProtocolError(Exception):
    """A frame or a sequence of frames breaks the protocol.

    `close_code` is the WebSocket close code the link should close with.
    """

    def __init__(self, reason: str, close_code: int = 4000) -> None:
        super().__init__(reason)
        self.reason = reason
        self.close_code = close_code


class _Frame(msgspec.Struct, tag_field="t", kw_only=True):
    v: int = PROTOCOL_VERSION


class ChartsSummary(msgspec.Struct, kw_only=True):
    charts: int = 0
    dimensions: int = 0
    collectors: list[str] = msgspec.field(default_factory=list)


class Hello(_Frame, tag="hello", kw_only=True):
    """First frame from the agent: who it is and what it can do."""

    agent_version: str
    hostname: str
    os: str
    machine_guid: str
    machine_id: str = ""
    boot_id: str = ""
    charts: ChartsSummary = msgspec.field(default_factory=ChartsSummary)
    capabilities: list[str] = msgspec.field(default_factory=list)
    # The agent's `[host labels]` (docs/agent.md). None (absent): an agent that
    # does not send labels, whose agent labels the Cloud leaves as they are;
    # {}: it has none. Older peers skip the field (maps, see above).
    labels: dict[str, str] | None = None


class HelloAck(_Frame, tag="hello_ack", kw_only=True):
    """The Cloud's answer to Hello: the link is ready."""

    session_id: str
    keepalive_seconds: float
    cloud_time: float
    # A resume token (docs/protocol.md, resume) for the next connection, valid
    # `resume_expires_in` seconds; "" when the agent did not offer "resume".
    resume_token: str = ""
    resume_expires_in: float = 0.0
    # What the Cloud speaks beyond v1's frames ("children": it takes
    # ChildrenUpdate). Absent from a Cloud that predates the field: then [].
    capabilities: list[str] = msgspec.field(default_factory=list)


class NodeUpdate(_Frame, tag="node_update", kw_only=True):
    """Metadata that changed since Hello; absent fields are unchanged."""

    hostname: str | None = None
    os: str | None = None
    agent_version: str | None = None
    charts: ChartsSummary | None = None
    labels: dict[str, str] | None = None  # the whole new set of `[host labels]`


# A parent announces its children (docs/protocol.md, children). One frame
# carries at most this many; a parent with more sends several.
MAX_CHILDREN_PER_FRAME: Final = 1000
CHILDREN_CAPABILITY: Final = "children"
# A child's states. The list may grow (an addition keeps `v`): a receiver
# skips an entry whose state it does not know instead of refusing the frame.
CHILD_STATES: Final[tuple[str, ...]] = ("live", "offline", "removed")


class ChildState(msgspec.Struct, kw_only=True):
    """One child agent streaming to the parent that sends this."""

    # The parent's name for the child, unique among its children: the machine
    # GUID, or GUID~HOSTNAME for a second host using that GUID (a clone).
    # Queries for it go to the parent's /host/ID/api/v1/...
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=401)]
    machine_guid: Annotated[str, msgspec.Meta(max_length=200)]
    hostname: Annotated[str, msgspec.Meta(max_length=255)] = ""
    state: Annotated[str, msgspec.Meta(max_length=16)]
    boot_id: Annotated[str, msgspec.Meta(max_length=64)] = ""
    agent_version: Annotated[str, msgspec.Meta(max_length=64)] = ""
    os: Annotated[str, msgspec.Meta(max_length=200)] = ""
    # The id of the child whose GUID this one also uses ("" when none).
    clone_of: Annotated[str, msgspec.Meta(max_length=401)] = ""


class ChildrenUpdate(_Frame, tag="children", kw_only=True):
    """Agent to Cloud, only after a HelloAck with "children" in capabilities:
    its children's states. `full`: the whole set (children not named are gone)."""

    children: Annotated[list[ChildState], msgspec.Meta(max_length=MAX_CHILDREN_PER_FRAME)] = (
        msgspec.field(default_factory=list)
    )
    full: bool = False


class AlertTransition(_Frame, tag="alert", kw_only=True):
    name: str
    chart: str
    old_status: str
    new_status: str
    value: float | None = None
    at: float


class QueryRequest(_Frame, tag="query", kw_only=True):
    """Cloud to agent: answer `method path?query` from the local API."""

    id: int
    method: str = "GET"
    path: str
    query: str = ""
    timeout_ms: int = 10_000


class QueryResponse(_Frame, tag="response", kw_only=True):
    """Agent to Cloud: the answer to QueryRequest `id`."""

    id: int
    status: int
    content_type: str = "application/json"
    body: bytes = b""
    encoding: Encoding = "identity"


class Disconnect(_Frame, tag="disconnect", kw_only=True):
    """Cloud to agent: the Cloud is closing the link; come back after a delay."""

    code: str
    text: str = ""
    reconnect_after_seconds: float | None = None
    # A Cloud restart hands each resuming link a fresh resume token here.
    resume_token: str = ""
    resume_expires_in: float = 0.0


class Reload(_Frame, tag="reload", kw_only=True):
    """Cloud to agent: re-read the claiming state and reconnect."""

    reason: str = ""


# The reasons a Goodbye may give. The list grows (versioning: additions keep
# `v`), so a receiver takes any other string as "other" instead of refusing it.
GoodbyeReason = Literal["restart", "shutdown", "upgrade", "maintenance", "unclaim", "other"]
GOODBYE_REASONS: Final[tuple[str, ...]] = (
    "restart",
    "shutdown",
    "upgrade",
    "maintenance",
    "unclaim",
    "other",
)


class Goodbye(_Frame, tag="goodbye", kw_only=True):
    """Agent to Cloud on a graceful stop: why, and when to expect it back.
    A reason this side does not know (a newer peer's) becomes "other"."""

    reason: str = "shutdown"
    expected_back_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.reason not in GOODBYE_REASONS:
            self.reason = "other"


class ErrorFrame(_Frame, tag="error", kw_only=True):
    """Either side: something failed. With `id`, it answers that query."""

    code: str
    text: str = ""
    id: int | None = None


Frame = (
    Hello
    | HelloAck
    | NodeUpdate
    | AlertTransition
    | QueryRequest
    | QueryResponse
    | Disconnect
    | Reload
    | Goodbye
    | ErrorFrame
    | ChildrenUpdate
)

FRAME_TYPES: Final[tuple[type[_Frame], ...]] = (
    Hello,
    HelloAck,
    NodeUpdate,
    AlertTransition,
    QueryRequest,
    QueryResponse,
    Disconnect,
    Reload,
    Goodbye,
    ErrorFrame,
    ChildrenUpdate,
)


class _Envelope(msgspec.Struct):
    t: str
    v: int


_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[Frame] = msgspec.msgpack.Decoder(Frame)
_envelope_decoder = msgspec.msgpack.Decoder(_Envelope)


def encode(frame: Frame) -> bytes:
    return _encoder.encode(frame)


def decode(data: bytes, max_size: int = MAX_FRAME_SIZE) -> Frame:
    """Decode one frame, raising ProtocolError with a reason on any fault."""
    if len(data) > max_size:
        raise ProtocolError(f"frame of {len(data)} bytes exceeds the {max_size} byte limit", 1009)
    return decode_versioned(
        _decoder,
        data,
        version=PROTOCOL_VERSION,
        speaks="protocol",
        error=ProtocolError,
        explain=_explain,
    )


def _explain(data: bytes, exc: Exception) -> str:
    """Name the version or type when a frame fails to decode, else the fault."""
    try:
        env = _envelope_decoder.decode(data)
    except (msgspec.MsgspecError, ValueError, RecursionError):
        return f"malformed frame: {exc}"
    if env.v != PROTOCOL_VERSION:
        return f"unsupported protocol version {env.v} (this side speaks {PROTOCOL_VERSION})"
    known = {t.__struct_config__.tag for t in FRAME_TYPES}
    if env.t not in known:
        return f"unknown frame type {env.t[:40]!r}"
    return f"malformed {env.t} frame: {exc}"


def make_response(query_id: int, status: int, content_type: str, body: bytes) -> QueryResponse:
    """A QueryResponse whose body is compressed when that pays off."""
    if len(body) > COMPRESS_THRESHOLD:
        packed = zlib.compress(body, 6)
        if len(packed) < len(body):
            return QueryResponse(
                id=query_id, status=status, content_type=content_type, body=packed, encoding="zlib"
            )
    return QueryResponse(id=query_id, status=status, content_type=content_type, body=body)


class BodyTooLarge(ProtocolError):
    """A compressed body inflates past the size the receiver accepts."""


def inflate_pieces(
    response: QueryResponse, max_size: int = MAX_BODY_SIZE, piece: int = INFLATE_PIECE
) -> Iterator[bytes]:
    """Inflate a zlib body piece by piece, each at most `piece` bytes, so the
    caller can count (or drop) each before the next is made: a bomb is refused
    after max_size bytes, never inflated whole. Raises BodyTooLarge past
    max_size, ProtocolError on a corrupt or truncated body."""
    inflater = zlib.decompressobj()
    data, total = response.body, 0
    while not inflater.eof:
        try:
            out = inflater.decompress(data, piece)
        except zlib.error as exc:
            raise ProtocolError(f"response {response.id}: corrupt zlib body: {exc}") from None
        data = inflater.unconsumed_tail
        if not out and not data and not inflater.eof:
            raise ProtocolError(f"response {response.id}: zlib body is truncated")
        total += len(out)
        if total > max_size:
            raise BodyTooLarge(f"response {response.id}: body inflates past {max_size} bytes")
        if out:
            yield out


def response_body(response: QueryResponse, max_size: int = MAX_BODY_SIZE) -> bytes:
    """The plain body of a response, refusing bodies that inflate past max_size."""
    if response.encoding == "identity":
        return response.body
    return b"".join(inflate_pieces(response, max_size))
