"""Property tests (hypothesis) of the stream protocol's decoder, which anyone
who reaches a parent's stream port can feed (before and after the API key).
Whatever bytes come in, in whatever pieces, the parent's connection yields
frames or one StreamFault, never another exception, never holds more than one
frame's worth of bytes, and stays closed after a fault."""

from __future__ import annotations

import msgspec
from hypothesis import example, given
from hypothesis import strategies as st

from tests.fixtures.fuzz import FUZZ, frame_maps
from tether.protocol import stream as sp

FRAME_MAPS = frame_maps(sp.FRAME_TYPES, sp.STREAM_VERSION)
HELLO = sp.encode(sp.Hello(api_key="k", machine_guid="g", hostname="h"))
CHART = sp.encode(sp.ChartDef(id="c", dimensions=[("a", "a"), ("b", "b")]))


@st.composite
def frame_shaped(draw: st.DrawFn) -> bytes:
    """A frame-shaped map (tests.fixtures.fuzz.frame_maps), length-prefixed."""
    body = msgspec.msgpack.encode(draw(FRAME_MAPS))
    return sp.HEADER.pack(len(body)) + body


def feed(conn: sp.StreamConnection, data: bytes, cuts: list[int]) -> list[sp.Event]:
    """`data` in pieces cut at `cuts`, as the network may deliver it."""
    events: list[sp.Event] = []
    start = 0
    for cut in [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]:
        events += conn.receive_data(data[start:cut])
        start = cut
        assert conn.buffered <= conn.max_frame_size + sp.HEADER.size
    return events


def check(events: list[sp.Event], conn: sp.StreamConnection) -> None:
    faults = [e for e in events if isinstance(e, sp.StreamFault)]
    assert len(faults) <= 1
    if faults:
        assert events[-1] is faults[0] and faults[0].reason  # nothing after a fault
        assert conn.closed and conn.receive_data(HELLO) == []
    for e in events:
        if isinstance(e, sp.FrameReceived):
            assert isinstance(e.frame, sp.FRAME_TYPES)


def parent_after_welcome() -> sp.StreamConnection:
    conn = sp.StreamConnection(sp.Role.PARENT)
    [hello] = conn.receive_data(HELLO)
    assert isinstance(hello, sp.FrameReceived)
    conn.send(sp.Welcome())
    [chart] = conn.receive_data(CHART)
    assert isinstance(chart, sp.FrameReceived)
    return conn


@FUZZ
@given(st.binary(max_size=4096), st.lists(st.integers(0, 4096), max_size=6))
@example(b"", [])
@example(sp.HEADER.pack(2**32 - 1), [])  # a 4 GiB frame announced
@example(sp.HEADER.pack(200_001) + b"\x91" * 200_000 + b"\xc0", [])  # deep nesting
@example(HELLO + HELLO, [3])  # Hello twice
@example(b"\xc1\xc1\xc1\xc1", [1, 2])
def test_any_bytes_give_frames_or_one_fault(data: bytes, cuts: list[int]) -> None:
    for conn in (sp.StreamConnection(sp.Role.PARENT), parent_after_welcome()):
        check(feed(conn, data, cuts), conn)


@FUZZ
@given(st.lists(frame_shaped(), min_size=1, max_size=4), st.lists(st.integers(0, 999), max_size=4))
def test_any_frame_shaped_input_gives_frames_or_one_fault(
    frames: list[bytes], cuts: list[int]
) -> None:
    for conn in (sp.StreamConnection(sp.Role.PARENT), parent_after_welcome()):
        check(feed(conn, b"".join(frames), cuts), conn)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["c", "x", ""]) | st.text(max_size=5),
        st.lists(st.none() | st.floats(), max_size=4),
        max_size=3,
    )
)
def test_samples_must_fit_their_charts(values: dict[str, list[float | None]]) -> None:
    conn = parent_after_welcome()
    data = msgspec.msgpack.encode({"t": "samples", "v": 1, "at": 10, "values": values})
    events = conn.receive_data(sp.HEADER.pack(len(data)) + data)
    fits = all(k == "c" and len(v) <= 2 for k, v in values.items())
    assert isinstance(events[0], sp.FrameReceived) == fits, (values, events)


def test_the_decoder_accepts_what_it_should() -> None:
    """The properties above cannot pass by refusing everything."""
    conn = parent_after_welcome()
    [ev] = feed(conn, sp.encode(sp.Samples(at=10, values={"c": [1.0, None]})), [1, 5])
    assert isinstance(ev, sp.FrameReceived) and isinstance(ev.frame, sp.Samples)
    assert ev.frame.values == {"c": [1.0, None]}
    # A newer peer's extra field is ignored; another version is refused.
    extra = msgspec.msgpack.encode({"t": "goodbye", "v": 1, "reason": "r", "new": [1]})
    [ok] = conn.receive_data(sp.HEADER.pack(len(extra)) + extra)
    assert isinstance(ok, sp.FrameReceived)
    other = sp.StreamConnection(sp.Role.PARENT)
    v2 = msgspec.msgpack.encode(
        {"t": "hello", "v": 2, "api_key": "", "machine_guid": "g", "hostname": "h"}
    )
    [fault] = other.receive_data(sp.HEADER.pack(len(v2)) + v2)
    assert isinstance(fault, sp.StreamFault) and "version 2" in fault.reason
