"""Frames: roundtrips, and every kind of bad input refused with a reason."""

from __future__ import annotations

import os
import random

import msgspec
import pytest

from tether.protocol.frames import (
    COMPRESS_THRESHOLD,
    MAX_FRAME_SIZE,
    PROTOCOL_VERSION,
    AlertTransition,
    ChartsSummary,
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
    make_response,
    response_body,
)

SAMPLES: list[Frame] = [
    Hello(
        agent_version="0.1.0",
        hostname="web-1",
        os="linux",
        machine_guid="5f1c0e43-4b7e-4e0b-9f3a-0c1d2e3f4a5b",
        machine_id="abc",
        boot_id="def",
        charts=ChartsSummary(charts=12, dimensions=80, collectors=["cpu", "mem"]),
        capabilities=["query", "alerts"],
    ),
    HelloAck(session_id="s-1", keepalive_seconds=20, cloud_time=1.7e9),
    NodeUpdate(hostname="web-2"),
    AlertTransition(
        name="cpu_high",
        chart="system.cpu",
        old_status="clear",
        new_status="warning",
        value=93.5,
        at=1.7e9,
    ),
    QueryRequest(id=7, path="/api/v1/info", query="after=-10", timeout_ms=5000),
    QueryResponse(id=7, status=200, body=b'{"x": 1}'),
    Disconnect(code="maintenance", text="restarting", reconnect_after_seconds=30),
    Reload(reason="claim changed"),
    Goodbye(reason="upgrade", expected_back_seconds=60),
    ErrorFrame(code="not_found", text="no such chart", id=7),
]


@pytest.mark.parametrize("frame", SAMPLES, ids=lambda f: type(f).__name__)
def test_roundtrip(frame: Frame) -> None:
    data = encode(frame)
    assert decode(data) == frame
    assert msgspec.msgpack.decode(data)["v"] == PROTOCOL_VERSION


def test_oversized_frame_refused_with_too_big_code() -> None:
    frame = QueryResponse(id=1, status=200, body=b"x" * 2000)
    with pytest.raises(ProtocolError) as err:
        decode(encode(frame), max_size=1000)
    assert err.value.close_code == 1009
    assert "exceeds" in err.value.reason


def test_default_limit_is_max_frame_size() -> None:
    big = b"\x00" * (MAX_FRAME_SIZE + 1)
    with pytest.raises(ProtocolError) as err:
        decode(big)
    assert err.value.close_code == 1009


def test_unknown_frame_type_named() -> None:
    data = msgspec.msgpack.encode({"t": "teleport", "v": PROTOCOL_VERSION, "to": "mars"})
    with pytest.raises(ProtocolError, match="unknown frame type 'teleport'") as err:
        decode(data)
    assert err.value.close_code == 4000


def test_wrong_version_named() -> None:
    data = msgspec.msgpack.encode({"t": "reload", "v": PROTOCOL_VERSION + 1})
    with pytest.raises(ProtocolError, match="unsupported protocol version 2"):
        decode(data)
    # Even when the newer frame would not decode as this version's shape.
    data = msgspec.msgpack.encode({"t": "query", "v": 9, "id": "uuid-now"})
    with pytest.raises(ProtocolError, match="unsupported protocol version 9"):
        decode(data)


def test_missing_field_and_wrong_type_named() -> None:
    data = msgspec.msgpack.encode({"t": "query", "v": PROTOCOL_VERSION, "id": 1})
    with pytest.raises(ProtocolError, match=r"malformed query frame.*path"):
        decode(data)
    # A reason of the wrong type is malformed; an unknown reason string is not
    # (it becomes "other": tests/protocol/test_lifecycle_frames.py).
    data = msgspec.msgpack.encode({"t": "goodbye", "v": PROTOCOL_VERSION, "reason": 7})
    with pytest.raises(ProtocolError, match="malformed goodbye frame"):
        decode(data)


def test_unknown_fields_ignored_for_forward_compatibility() -> None:
    data = msgspec.msgpack.encode(
        {"t": "reload", "v": PROTOCOL_VERSION, "reason": "r", "added_in_1_1": [1, 2]}
    )
    assert decode(data) == Reload(reason="r")


def test_random_bytes_never_crash() -> None:
    rng = random.Random(1234)
    valid = [encode(f) for f in SAMPLES]
    for i in range(3000):
        if i % 2:
            data = rng.randbytes(rng.randint(0, 200))
        else:  # mutate a valid frame: flip, cut or extend
            data = bytearray(rng.choice(valid))
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            data = bytes(data[: rng.randint(0, len(data))])
        try:
            frame = decode(data)
        except ProtocolError as exc:
            assert exc.reason
        else:
            assert isinstance(frame, tuple(type(f) for f in SAMPLES))


def test_small_body_sent_as_is() -> None:
    resp = make_response(1, 200, "application/json", b"{}")
    assert resp.encoding == "identity"
    assert response_body(resp) == b"{}"


def test_large_body_compressed_inside_frame() -> None:
    body = b'{"labels":["time","user","system"],"data":[' + b"[1,2.5,3.25]," * 5000 + b"]}"
    assert len(body) > COMPRESS_THRESHOLD
    resp = make_response(2, 200, "application/json", body)
    assert resp.encoding == "zlib"
    assert len(encode(resp)) < len(body) / 5
    assert response_body(decode(encode(resp))) == body  # type: ignore[arg-type]


def test_incompressible_large_body_not_inflated() -> None:
    body = os.urandom(COMPRESS_THRESHOLD * 2)
    resp = make_response(3, 200, "application/octet-stream", body)
    assert resp.encoding == "identity"
    assert resp.body == body


def test_zip_bomb_and_corrupt_body_refused() -> None:
    import zlib

    bomb = QueryResponse(id=4, status=200, body=zlib.compress(b"\0" * 1_000_000), encoding="zlib")
    with pytest.raises(ProtocolError, match="inflates past"):
        response_body(bomb, max_size=100_000)
    corrupt = QueryResponse(id=5, status=200, body=b"not zlib", encoding="zlib")
    with pytest.raises(ProtocolError, match="corrupt"):
        response_body(corrupt)
