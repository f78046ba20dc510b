"""A real protocol peer for the Cloud's link tests, and the basic link tests.

`Peer` is a node as the Cloud sees it: it claims itself through the real claim
endpoint with its own RSA key, authenticates through the real challenge and
password endpoints, and opens `wss://.../aclk` with the `websockets` client,
speaking `tether.protocol` (the same package the agent uses). It is a real
peer, not a stand-in: the Cloud under test is the real `tether-cloud` process.

Other `test_cloud_*` files import the helpers from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.fixtures.cloud import Cloud
from tests.fixtures.common import poll
from tether.protocol import auth
from tether.protocol.frames import (
    ChartsSummary,
    Frame,
    Hello,
    HelloAck,
    QueryRequest,
    decode,
    encode,
    make_response,
)

KEEPALIVE = 1.0
FAST = ("--keepalive", f"{KEEPALIVE:g}")


def new_key() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public




@dataclass
class Peer:
    cloud: Cloud
    node_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    hostname: str = "peer-host"
    private_pem: bytes = b""
    public_pem: bytes = b""
    machine_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    boot_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def claim(self) -> Peer:
        if not self.private_pem:
            self.private_pem, self.public_pem = new_key()
        r = self.cloud.api(
            "PUT",
            f"/api/v1/spaces/nodes/{self.node_id}",
            token="",
            json={
                "node": {"id": self.node_id, "hostname": self.hostname},
                "token": self.cloud.claim_token,
                "rooms": self.cloud.room_ids[:1],
                "publicKey": self.public_pem.decode(),
                "mGUID": str(uuid.uuid4()),
            },
        )
        assert r.status_code == 204, r.text
        return self

    # -- auth -------------------------------------------------------------------

    def challenge(self, http: httpx.Client) -> httpx.Response:
        return http.get(auth.challenge_path(self.node_id))

    def answer_of(self, r: httpx.Response) -> bytes:
        assert r.status_code == 200, r.text
        sealed = auth.b64decode(r.json()["challenge"])
        return auth.decrypt_challenge(self.private_pem, sealed)

    def password(self, http: httpx.Client, answer: bytes) -> httpx.Response:
        return http.post(
            auth.password_path(self.node_id), json={"response": auth.b64encode(answer)}
        )

    def authenticate(self) -> auth.PasswordReply:
        with self.cloud.client() as http:
            r = self.password(http, self.answer_of(self.challenge(http)))
        assert r.status_code == 200, r.text
        return msgspec.json.decode(r.content, type=auth.PasswordReply)

    def hello(self, **kw: Any) -> Hello:
        fields: dict[str, Any] = {
            "agent_version": "9.9.9-peer",
            "hostname": self.hostname,
            "os": "PeerOS 1",
            "machine_guid": "guid-" + self.node_id[:8],
            "machine_id": self.machine_id,
            "boot_id": self.boot_id,
            "charts": ChartsSummary(charts=3, dimensions=7, collectors=["cpu"]),
            "capabilities": ["query", "goodbye"],
        }
        fields.update(kw)
        return Hello(**fields)

    # -- the node's view through the API --------------------------------------------

    def node(self) -> dict[str, Any]:
        r = self.cloud.api("GET", f"/api/v1/spaces/{self.cloud.space_id}/nodes/{self.node_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def state(self) -> str:
        return str(self.node()["state"])


def ssl_ctx(cloud: Cloud) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cloud.ca_file)


async def open_ws(cloud: Cloud, token: str | None, url: str | None = None) -> ClientConnection:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await connect(
        url or cloud.url.replace("https://", "wss://") + auth.LINK_PATH,
        ssl=ssl_ctx(cloud),
        proxy=None,
        compression=None,
        additional_headers=headers,
        max_size=None,  # let the Cloud, not this peer, enforce the frame limit
        open_timeout=10,
    )


class Link:
    """An open, greeted link of a Peer."""

    def __init__(self, peer: Peer, ws: ClientConnection, ack: HelloAck) -> None:
        self.peer, self.ws, self.ack = peer, ws, ack

    async def send(self, frame: Frame) -> None:
        await self.ws.send(encode(frame))

    async def recv(self, within: float = 10) -> Frame:
        data = await asyncio.wait_for(self.ws.recv(decode=False), within)
        return decode(data)

    async def serve(self, answer: Callable[[QueryRequest], bytes] | None = None) -> None:
        """Answer every query (default: echo the path and query as JSON)."""
        async for message in self.ws:
            frame = decode(message if isinstance(message, bytes) else message.encode())
            if isinstance(frame, QueryRequest):
                body = (
                    answer(frame)
                    if answer
                    else json.dumps({"path": frame.path, "query": frame.query}).encode()
                )
                await self.send(make_response(frame.id, 200, "application/json", body))

    async def closed(self, within: float = 10) -> tuple[int | None, str | None]:
        """Wait for the Cloud to close the link; (code, reason) it sent."""
        async with asyncio.timeout(within):
            with contextlib.suppress(ConnectionClosed):
                async for _ in self.ws:  # drain whatever comes before the close
                    pass
            await self.ws.wait_closed()
        return self.ws.close_code, self.ws.close_reason


async def link_up(peer: Peer, **hello: Any) -> Link:
    reply = peer.authenticate()
    ws = await open_ws(peer.cloud, reply.link_token, reply.link_url)
    await ws.send(encode(peer.hello(**hello)))
    ack = decode(await asyncio.wait_for(ws.recv(decode=False), 10))
    assert isinstance(ack, HelloAck), ack
    return Link(peer, ws, ack)


# -- tests -------------------------------------------------------------------------


def test_hello_makes_the_node_live_with_its_metadata_refreshed_each_time(
    start_cloud: Callable[..., Cloud],
) -> None:
    cloud = start_cloud(*FAST)
    peer = Peer(cloud, hostname="before-rename").claim()
    assert peer.state() == "unseen"

    async def scenario() -> None:
        t0 = time.monotonic()
        link = await link_up(peer)
        assert link.ack.keepalive_seconds == KEEPALIVE
        uuid.UUID(link.ack.session_id)  # a uuid per connection
        node = await asyncio.to_thread(peer.node)
        live_after = time.monotonic() - t0
        assert node["state"] == "live", node
        assert live_after < 1.0, f"live after {live_after:.3f} s"
        assert node["hostname"] == "before-rename"
        assert node["os"] == "PeerOS 1" and node["agent_version"] == "9.9.9-peer"
        assert node["session_id"] == link.ack.session_id
        await link.ws.close()
        await asyncio.to_thread(poll, lambda: peer.state() == "offline", 5, "offline")

        # Renamed host, new agent: the next connection refreshes the metadata.
        peer.hostname = "after-rename"
        link2 = await link_up(peer, agent_version="10.0.0")
        assert link2.ack.session_id != link.ack.session_id
        node = await asyncio.to_thread(peer.node)
        assert node["hostname"] == "after-rename" and node["agent_version"] == "10.0.0"
        assert node["machine_id"] == peer.machine_id and node["boot_id"] == peer.boot_id
        causes = [e["cause"] for e in node["events"] if e["kind"] == "state"]
        assert any("connected from" in (c or "") for c in causes), causes
        assert node["state_since"] and node["last_address"] == "127.0.0.1"
        await link2.ws.close()

    asyncio.run(scenario())


def test_link_token_works_once_and_only_with_a_token(start_cloud: Callable[..., Cloud]) -> None:
    from websockets.exceptions import InvalidStatus

    cloud = start_cloud(*FAST)
    peer = Peer(cloud).claim()
    reply = peer.authenticate()
    assert reply.link_url == cloud.url.replace("https://", "wss://") + "/aclk"
    assert reply.keepalive_seconds == KEEPALIVE
    assert reply.backoff.base_seconds > 0 and reply.backoff.max_seconds >= 60

    async def scenario() -> None:
        ws = await open_ws(cloud, reply.link_token, reply.link_url)
        for token in (reply.link_token, None, "not-a-token"):
            try:
                await open_ws(cloud, token)
            except InvalidStatus as exc:
                assert exc.response.status_code == 401  # transient: authenticate again
                assert b"ErrLinkTokenInvalid" in exc.response.body
            else:
                raise AssertionError(f"token {token!r} was accepted")
        await ws.close()

    asyncio.run(scenario())
    log = cloud.log_file.read_text()
    assert reply.link_token not in log
    assert "link token invalid, expired or already used" in log
