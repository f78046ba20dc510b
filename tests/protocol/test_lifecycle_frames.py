"""Goodbye reasons that grow without breaking older peers, the clone close
code, and the key rotation proof (tether.protocol, no I/O)."""

from __future__ import annotations

import msgspec
import pytest

from tether.node.key_files import generate_pair
from tether.protocol import auth
from tether.protocol import key_rotation as kr
from tether.protocol.frames import (
    GOODBYE_REASONS,
    PROTOCOL_VERSION,
    Goodbye,
    Hello,
    HelloAck,
    decode,
    encode,
)
from tether.protocol.link import (
    CLOSE_CLONE,
    CloseLink,
    FrameReceived,
    LinkConnection,
    Role,
    describe_close,
    is_terminal_close,
)


def _goodbye(reason: object, **extra: object) -> bytes:
    return msgspec.msgpack.encode(
        {"t": "goodbye", "v": PROTOCOL_VERSION, "reason": reason, **extra}
    )


@pytest.mark.parametrize("reason", ["hibernate", "", "x" * 500, "UPGRADE"])
def test_an_unknown_goodbye_reason_from_a_newer_agent_is_other(reason: str) -> None:
    frame = decode(_goodbye(reason, expected_back_seconds=60))
    assert isinstance(frame, Goodbye)
    assert frame.reason == "other" and frame.expected_back_seconds == 60


@pytest.mark.parametrize("reason", GOODBYE_REASONS)
def test_known_goodbye_reasons_are_kept(reason: str) -> None:
    frame = decode(encode(Goodbye(reason=reason)))
    assert isinstance(frame, Goodbye) and frame.reason == reason


def test_the_cloud_state_machine_accepts_an_unknown_reason_instead_of_closing() -> None:
    cloud = LinkConnection(Role.CLOUD)
    hello = Hello(agent_version="1", hostname="h", os="o", machine_guid="g")
    cloud.receive_data(encode(hello))
    cloud.send(HelloAck(session_id="s", keepalive_seconds=20, cloud_time=0))
    events = cloud.receive_data(_goodbye("hibernate"))
    assert not any(isinstance(e, CloseLink) for e in events)
    assert isinstance(events[0], FrameReceived) and events[0].frame == Goodbye(reason="other")


def test_a_goodbye_without_a_reason_is_a_shutdown() -> None:
    frame = decode(msgspec.msgpack.encode({"t": "goodbye", "v": PROTOCOL_VERSION}))
    assert frame == Goodbye(reason="shutdown")


def test_the_clone_close_is_terminal_and_named() -> None:
    assert CLOSE_CLONE == 4010 and is_terminal_close(CLOSE_CLONE)
    assert "another host" in describe_close(CLOSE_CLONE)


def test_the_rotation_proof_binds_the_new_key_the_node_and_the_challenge() -> None:
    new_private, new_public = generate_pair()
    other_private, other_public = generate_pair()
    node, plain = "0d1e8a6c-0000-4000-8000-000000000001", b"c" * 32
    proof = kr.sign_proof(new_private, node, plain)
    assert kr.proof_valid(new_public, node, plain, proof)
    assert kr.proof_valid(new_public, node.upper(), plain, proof)  # ids compare lowercase
    # Another node, another challenge, another key: refused.
    assert not kr.proof_valid(new_public, node[:-1] + "2", plain, proof)
    assert not kr.proof_valid(new_public, node, b"d" * 32, proof)
    assert not kr.proof_valid(other_public, node, plain, proof)
    assert not kr.proof_valid(new_public, node, plain, kr.sign_proof(other_private, node, plain))
    with pytest.raises(auth.AuthError):
        kr.proof_valid(b"not a key", node, plain, proof)
    assert len(kr.key_sha256(new_public)) == 64
