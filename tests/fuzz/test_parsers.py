"""Property tests (hypothesis) of the two parsers anyone can feed: the link's
frame decoder (any node, or anything that got a link token) and the claim body
parser (anyone, unauthenticated). Whatever comes in, the answer is a value or
the parser's documented error, never another exception."""

from __future__ import annotations

import json
import uuid
from typing import Any

import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import example, given
from hypothesis import strategies as st

from tests.fixtures.fuzz import FUZZ, decodes_or_refuses, frame_maps, msgpack_values
from tether.cloud.claim import ClaimError, ClaimRequest, parse_claim
from tether.protocol.frames import FRAME_TYPES, PROTOCOL_VERSION, Reload, decode


@FUZZ
@given(st.binary(max_size=2048))
@example(b"")
@example(b"\x91" * 200_000 + b"\xc0")  # 200,000 nested arrays
@example(b"\x83\xa1t\xa5hello\xa1v\x01\xa1z" + b"\x91" * 200_000 + b"\xc0")  # ... in a field
@example(b"\x82\xa1t\xa5hello\xa1v\xcf" + b"\xff" * 8)  # version 2**64-1
@example(b"\xc1")  # the one byte msgpack never uses
def test_any_bytes_decode_to_a_frame_or_a_protocol_error(data: bytes) -> None:
    decodes_or_refuses(data)


@FUZZ
@given(msgpack_values | frame_maps(FRAME_TYPES, PROTOCOL_VERSION))
def test_any_msgpack_value_decodes_to_a_frame_or_a_protocol_error(value: Any) -> None:
    decodes_or_refuses(msgspec.msgpack.encode(value))


def test_the_decoder_accepts_what_it_should() -> None:
    """The property above cannot pass by refusing everything."""
    frame = decode(msgspec.msgpack.encode({"t": "reload", "v": PROTOCOL_VERSION, "x": [1]}))
    assert isinstance(frame, Reload)


# -- the claim body ------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=30,
)


def _public_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


PEM = _public_pem()
NODE_ID = str(uuid.uuid4())


@st.composite
def claim_shaped(draw: st.DrawFn) -> dict[str, Any]:
    """Claim bodies whose fields are each either right or anything."""
    node = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "id": st.just(NODE_ID) | json_values,
                "hostname": st.sampled_from(["node-1", " h ", "a\u202eb", "x" * 300]) | json_values,
            },
        )
        | json_values
    )
    return draw(
        st.fixed_dictionaries(
            {"node": st.just(node)},
            optional={
                "token": st.text(max_size=40) | json_values,
                "rooms": st.lists(st.text(max_size=40), max_size=5) | st.text() | json_values,
                "publicKey": st.just(PEM) | st.text(max_size=100) | json_values,
                "mGUID": st.text(max_size=50) | json_values,
            },
        )
    )


node_ids = st.just(NODE_ID) | st.just(NODE_ID.upper()) | st.text(max_size=50)


def parses_or_refuses(path_id: str, raw: bytes) -> ClaimRequest | None:
    try:
        return parse_claim(path_id, raw)
    except ClaimError as exc:
        # Parsing alone only ever refuses with a 400 that names the problem.
        assert exc.status == 400, exc.key
        assert exc.message
        return None


@FUZZ
@given(node_ids, st.binary(max_size=2048))
@example(NODE_ID, b"[" * 20_000)
@example(NODE_ID, b'{"node":' * 5_000)
@example(NODE_ID, b'{"node":{"hostname":"h","id":' + b"9" * 5_000 + b"}}")
@example(NODE_ID, b'{"node":{"hostname":"h","id":1e400}}')
@example(NODE_ID, b"\xff\xfe")
def test_any_bytes_give_a_claim_request_or_a_claim_error(path_id: str, raw: bytes) -> None:
    parses_or_refuses(path_id, raw)


@FUZZ
@given(node_ids, json_values | claim_shaped())
def test_any_json_gives_a_claim_request_or_a_claim_error(path_id: str, body: Any) -> None:
    got = parses_or_refuses(path_id, json.dumps(body).encode())
    if got is not None:
        assert got.node_id == NODE_ID
        assert got.hostname and got.public_key_sha256


def test_the_claim_parser_accepts_a_good_claim() -> None:
    body = {"node": {"id": NODE_ID, "hostname": "node-1"}, "token": "t", "publicKey": PEM}
    got = parses_or_refuses(NODE_ID, json.dumps(body).encode())
    assert got is not None and got.hostname == "node-1" and got.rooms == []
