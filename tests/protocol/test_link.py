"""The link state machine: the normal exchange, misuse on each side, bad peers."""

from __future__ import annotations

import msgspec
import pytest

from tether.protocol.frames import (
    PROTOCOL_VERSION,
    AlertTransition,
    Disconnect,
    ErrorFrame,
    Goodbye,
    Hello,
    HelloAck,
    NodeUpdate,
    QueryRequest,
    QueryResponse,
    Reload,
    encode,
)
from tether.protocol.link import (
    CLOSE_NODE_REMOVED,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_REPLACED,
    CLOSE_SERVICE_RESTART,
    CLOSE_TOKEN_INVALID,
    CLOSE_TOO_BIG,
    CloseLink,
    FrameReceived,
    LinkConnection,
    LinkState,
    LocalProtocolError,
    Role,
    is_terminal_close,
)

HELLO = Hello(agent_version="0.1", hostname="h", os="linux", machine_guid="g")
ACK = HelloAck(session_id="s1", keepalive_seconds=20, cloud_time=0.0)


def ready_pair() -> tuple[LinkConnection, LinkConnection]:
    agent, cloud = LinkConnection(Role.AGENT), LinkConnection(Role.CLOUD)
    assert cloud.receive_data(agent.send(HELLO)) == [FrameReceived(HELLO)]
    assert cloud.state is LinkState.HELLO_RECEIVED and cloud.hello == HELLO
    assert agent.receive_data(cloud.send(ACK)) == [FrameReceived(ACK)]
    assert agent.state is cloud.state is LinkState.READY
    assert agent.session_id == "s1" and agent.keepalive_seconds == 20
    return agent, cloud


def test_query_roundtrip_with_correlation_ids() -> None:
    agent, cloud = ready_pair()
    ids = [cloud.next_query_id() for _ in range(3)]
    assert len(set(ids)) == 3
    for qid in ids:
        req = QueryRequest(id=qid, path="/api/v1/info")
        assert agent.receive_data(cloud.send(req)) == [FrameReceived(req)]
    assert cloud.pending_queries == set(ids)
    # Answers arrive out of order: each matches its own request.
    for qid in reversed(ids):
        resp = QueryResponse(id=qid, status=200, body=str(qid).encode())
        assert cloud.receive_data(agent.send(resp)) == [FrameReceived(resp)]
    assert cloud.pending_queries == frozenset()


def test_duplicate_query_id_rejected() -> None:
    _, cloud = ready_pair()
    cloud.send(QueryRequest(id=5, path="/a"))
    with pytest.raises(LocalProtocolError, match="already in flight"):
        cloud.send(QueryRequest(id=5, path="/b"))
    # The id generator skips ids in flight.
    assert all(cloud.next_query_id() != 5 for _ in range(10))


def test_late_answer_after_timeout_dropped_quietly() -> None:
    agent, cloud = ready_pair()
    cloud.send(QueryRequest(id=9, path="/slow"))
    cloud.cancel_query(9)
    assert cloud.receive_data(agent.send(QueryResponse(id=9, status=200))) == []
    assert cloud.stale_responses == 1
    assert cloud.state is LinkState.READY


def test_error_frame_answers_a_query() -> None:
    agent, cloud = ready_pair()
    cloud.send(QueryRequest(id=1, path="/x"))
    err = ErrorFrame(code="internal", text="boom", id=1)
    assert cloud.receive_data(agent.send(err)) == [FrameReceived(err)]
    assert cloud.pending_queries == frozenset()


def test_agent_must_send_hello_first() -> None:
    agent = LinkConnection(Role.AGENT)
    with pytest.raises(LocalProtocolError, match="may not send NodeUpdate in state idle"):
        agent.send(NodeUpdate(hostname="x"))


@pytest.mark.parametrize(
    "frame",
    [
        QueryRequest(id=1, path="/"),
        Disconnect(code="x"),
        Reload(),
        HelloAck(session_id="s", keepalive_seconds=1, cloud_time=0),
    ],
    ids=lambda f: type(f).__name__,
)
def test_agent_may_not_send_cloud_frames(frame: object) -> None:
    agent, _ = ready_pair()
    with pytest.raises(LocalProtocolError):
        agent.send(frame)  # type: ignore[arg-type]


def test_cloud_may_not_query_before_ready_or_ack_twice() -> None:
    agent, cloud = LinkConnection(Role.AGENT), LinkConnection(Role.CLOUD)
    with pytest.raises(LocalProtocolError):
        cloud.send(ACK)  # before Hello
    cloud.receive_data(agent.send(HELLO))
    with pytest.raises(LocalProtocolError):
        cloud.send(QueryRequest(id=1, path="/"))
    cloud.send(ACK)
    with pytest.raises(LocalProtocolError):
        cloud.send(ACK)


def test_peer_sending_out_of_order_closes_with_reason() -> None:
    cloud = LinkConnection(Role.CLOUD)
    events = cloud.receive_data(encode(NodeUpdate(hostname="x")))
    assert events == [
        CloseLink(CLOSE_PROTOCOL_ERROR, "unexpected NodeUpdate from agent in state idle")
    ]
    assert cloud.state is LinkState.CLOSING
    # Anything after the close is ignored, never raises.
    assert cloud.receive_data(encode(HELLO)) == []


def test_agent_refuses_query_before_hello_ack() -> None:
    agent = LinkConnection(Role.AGENT)
    agent.send(HELLO)
    [event] = agent.receive_data(encode(QueryRequest(id=1, path="/")))
    assert isinstance(event, CloseLink) and event.code == CLOSE_PROTOCOL_ERROR


def test_cloud_refuses_agent_sending_queries() -> None:
    _, cloud = ready_pair()
    [event] = cloud.receive_data(encode(QueryRequest(id=1, path="/")))
    assert isinstance(event, CloseLink)
    assert "unexpected QueryRequest from agent" in event.reason


def test_garbage_and_oversize_close_the_link() -> None:
    _, cloud = ready_pair()
    [event] = cloud.receive_data(b"\xc1garbage")
    assert isinstance(event, CloseLink) and event.code == CLOSE_PROTOCOL_ERROR
    assert event.reason.startswith("malformed frame")

    small = LinkConnection(Role.CLOUD, max_frame_size=64)
    [event] = small.receive_data(encode(HELLO) + b"\0" * 64)
    assert isinstance(event, CloseLink) and event.code == CLOSE_TOO_BIG


def test_close_reason_fits_a_websocket_close_frame() -> None:
    cloud = LinkConnection(Role.CLOUD)
    data = msgspec.msgpack.encode({"t": "x" * 500, "v": PROTOCOL_VERSION})
    [event] = cloud.receive_data(data)
    assert isinstance(event, CloseLink) and len(event.reason.encode()) <= 123


def test_goodbye_moves_both_sides_to_closing() -> None:
    agent, cloud = ready_pair()
    bye = Goodbye(reason="restart", expected_back_seconds=5)
    assert cloud.receive_data(agent.send(bye)) == [FrameReceived(bye)]
    assert agent.state is cloud.state is LinkState.CLOSING
    with pytest.raises(LocalProtocolError):
        agent.send(AlertTransition(name="a", chart="c", old_status="x", new_status="y", at=0))


def test_disconnect_from_cloud_carries_delay() -> None:
    agent, cloud = ready_pair()
    frame = Disconnect(code="restart", reconnect_after_seconds=12.5)
    [event] = agent.receive_data(cloud.send(frame))
    assert isinstance(event, FrameReceived)
    assert isinstance(event.frame, Disconnect) and event.frame.reconnect_after_seconds == 12.5
    assert agent.state is LinkState.CLOSING


@pytest.mark.parametrize(
    ("code", "terminal"),
    [
        (1000, False),
        (1001, False),
        (1006, False),
        (CLOSE_SERVICE_RESTART, False),
        (CLOSE_PROTOCOL_ERROR, False),
        (CLOSE_TOKEN_INVALID, False),
        (CLOSE_REPLACED, False),
        (CLOSE_NODE_REMOVED, True),
    ],
)
def test_terminal_close_codes(code: int, terminal: bool) -> None:
    assert is_terminal_close(code) is terminal
