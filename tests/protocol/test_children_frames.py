"""The `children` frame (docs/protocol.md, children): its encoding, bounds,
versioning against older and newer peers, and where the state machine allows it."""

from __future__ import annotations

import msgspec
import pytest

from tether.protocol.frames import (
    CHILDREN_CAPABILITY,
    MAX_CHILDREN_PER_FRAME,
    PROTOCOL_VERSION,
    ChildrenUpdate,
    ChildState,
    Hello,
    HelloAck,
    ProtocolError,
    decode,
    encode,
)
from tether.protocol.link import (
    CLOSE_PROTOCOL_ERROR,
    CloseLink,
    FrameReceived,
    LinkConnection,
    LocalProtocolError,
    Role,
)

HELLO = Hello(agent_version="0.1", hostname="p", os="linux", machine_guid="g")
ACK = HelloAck(
    session_id="s1", keepalive_seconds=20, cloud_time=0.0, capabilities=[CHILDREN_CAPABILITY]
)
CHILD = ChildState(id="guid-1", machine_guid="guid-1", hostname="c1", state="live", boot_id="b")


def test_a_children_frame_round_trips_as_a_map_of_the_documented_keys() -> None:
    frame = ChildrenUpdate(children=[CHILD], full=True)
    raw = msgspec.msgpack.decode(encode(frame))
    assert raw["t"] == "children" and raw["v"] == PROTOCOL_VERSION and raw["full"] is True
    assert set(raw["children"][0]) == {
        "id",
        "machine_guid",
        "hostname",
        "state",
        "boot_id",
        "agent_version",
        "os",
        "clone_of",
    }
    assert decode(encode(frame)) == frame


def test_an_independent_encoder_with_only_the_required_keys_is_understood() -> None:
    data = msgspec.msgpack.encode(
        {
            "t": "children",
            "v": 1,
            "children": [{"id": "x", "machine_guid": "x", "state": "offline"}],
            "from_the_future": [1, 2],
        }
    )
    frame = decode(data)
    assert isinstance(frame, ChildrenUpdate) and frame.full is False
    assert frame.children[0].state == "offline" and frame.children[0].hostname == ""


def test_a_newer_peers_state_decodes_so_the_receiver_can_skip_it() -> None:
    data = msgspec.msgpack.encode(
        {"t": "children", "v": 1, "children": [{"id": "x", "machine_guid": "x", "state": "asleep"}]}
    )
    frame = decode(data)
    assert isinstance(frame, ChildrenUpdate) and frame.children[0].state == "asleep"


@pytest.mark.parametrize(
    "children",
    [
        [{"id": "", "machine_guid": "x", "state": "live"}],  # an empty id
        [{"id": "x" * 402, "machine_guid": "x", "state": "live"}],  # a long id
        [{"machine_guid": "x", "state": "live"}],  # no id
        [{"id": "x", "machine_guid": "x", "state": "live"}] * (MAX_CHILDREN_PER_FRAME + 1),
        "not a list",
    ],
)
def test_a_malformed_children_frame_is_refused(children: object) -> None:
    data = msgspec.msgpack.encode({"t": "children", "v": 1, "children": children})
    with pytest.raises(ProtocolError, match="malformed children frame"):
        decode(data)


def test_an_older_clouds_hello_ack_has_no_capabilities() -> None:
    data = msgspec.msgpack.encode(
        {"t": "hello_ack", "v": 1, "session_id": "s", "keepalive_seconds": 20, "cloud_time": 0}
    )
    frame = decode(data)
    assert isinstance(frame, HelloAck) and frame.capabilities == []


def test_only_a_ready_agent_may_send_children() -> None:
    agent, cloud = LinkConnection(Role.AGENT), LinkConnection(Role.CLOUD)
    with pytest.raises(LocalProtocolError):
        agent.send(ChildrenUpdate(children=[CHILD]))
    cloud.receive_data(agent.send(HELLO))
    agent.receive_data(cloud.send(ACK))
    update = ChildrenUpdate(children=[CHILD])
    assert cloud.receive_data(agent.send(update)) == [FrameReceived(update)]
    with pytest.raises(LocalProtocolError):
        cloud.send(update)


def test_children_before_hello_ack_close_the_link() -> None:
    agent, cloud = LinkConnection(Role.AGENT), LinkConnection(Role.CLOUD)
    cloud.receive_data(agent.send(HELLO))
    events = cloud.receive_data(encode(ChildrenUpdate(children=[CHILD])))
    assert len(events) == 1 and isinstance(events[0], CloseLink)
    assert events[0].code == CLOSE_PROTOCOL_ERROR and "ChildrenUpdate" in events[0].reason
