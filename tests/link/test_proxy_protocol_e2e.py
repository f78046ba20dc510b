"""PROXY protocol end to end (tether.cloud.proxy_listener): the shipped HAProxy
config sends a v2 header, so a claim made through the balancer from
127.0.0.2 is recorded as from 127.0.0.2 (not HAProxy's 127.0.0.1) and one
address's bad claims no longer lock out the others; a peer that is not a
trusted proxy cannot spoof its address with a header of its own; a trusted
one without a header is refused when the header is required."""

from __future__ import annotations

import json
import socket
import ssl
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.fixtures.api import claim_body
from tests.fixtures.cloud import Cloud
from tests.fixtures.common import poll
from tests.fixtures.haproxy import balancer
from tether.cloud import proxy_protocol as pp

BAD_TOKEN = "tct_abcdefgh_" + "x" * 43


def _client(cloud: Cloud, url: str, source: str) -> httpx.Client:
    transport = httpx.HTTPTransport(verify=cloud.ssl_context(), local_address=source)
    return httpx.Client(base_url=url, transport=transport, trust_env=False, timeout=15)


def claim_from(cloud: Cloud, url: str, source: str, token: str | None = None) -> httpx.Response:
    node_id = str(uuid.uuid4())
    body = claim_body(node_id, token or cloud.claim_token)
    with _client(cloud, url, source) as c:
        r = c.put(f"/api/v1/spaces/nodes/{node_id}", json=body)
    r.extensions["node_id"] = node_id
    return r


def last_address(cloud: Cloud, node_id: str) -> str | None:
    engine = sa.create_engine(cloud.database_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                sa.text("SELECT last_address FROM nodes WHERE id = :id"), {"id": node_id}
            ).one()
    finally:
        engine.dispose()
    return None if row[0] is None else str(row[0])


def raw_claim(cloud: Cloud, source: str, header: bytes) -> tuple[int, str]:
    """A claim over a connection that starts with `header`, from `source`:
    the HTTP status (0 when the Cloud closed the connection first) and the node id."""
    node_id = str(uuid.uuid4())
    body = json.dumps(claim_body(node_id, cloud.claim_token)).encode()
    request = (
        f"PUT /api/v1/spaces/nodes/{node_id} HTTP/1.1\r\nHost: 127.0.0.1:{cloud.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body
    sock = socket.create_connection(
        ("127.0.0.1", cloud.port), timeout=10, source_address=(source, 0)
    )
    try:
        sock.sendall(header)
        tls = cloud.ssl_context().wrap_socket(sock, server_hostname="127.0.0.1")
        tls.sendall(request)
        answer = tls.recv(4096)
    except (ssl.SSLError, OSError):
        return 0, node_id
    finally:
        sock.close()
    return (int(answer.split(b" ", 2)[1]) if answer else 0), node_id


def test_claims_through_haproxy_are_from_the_real_client(
    start_cloud: Callable[..., Cloud], tmp_path: Path
) -> None:
    cloud = start_cloud("--trusted-proxy", "127.0.0.1/32", "--require-proxy-header")
    # The balancer's own address without a header: refused, as required.
    with pytest.raises(httpx.HTTPError), cloud.client() as direct:
        direct.get("/api/health")
    with balancer(cloud, cloud, tmp_path / "haproxy.log") as lb_url:
        r = claim_from(cloud, lb_url, "127.0.0.2")
        assert r.status_code == 204, r.text
        assert last_address(cloud, r.extensions["node_id"]) == "127.0.0.2"
        # Bad claims from 127.0.0.2 use up 127.0.0.2's budget only: behind a
        # balancer without PROXY protocol they locked out every client.
        for _ in range(10):
            assert claim_from(cloud, lb_url, "127.0.0.2", BAD_TOKEN).status_code == 403
        refused = claim_from(cloud, lb_url, "127.0.0.2")
        assert refused.status_code == 429
        assert "127.0.0.2" in refused.json()["errorMessage"]
        other = claim_from(cloud, lb_url, "127.0.0.3")
        assert other.status_code == 204, other.text
        assert last_address(cloud, other.extensions["node_id"]) == "127.0.0.3"


def test_a_spoofed_proxy_header_from_an_untrusted_peer_is_refused(
    start_cloud: Callable[..., Cloud],
) -> None:
    cloud = start_cloud("--trusted-proxy", "127.0.0.2/32")
    spoof = pp.v2_header(("203.0.113.9", 40000), ("127.0.0.1", cloud.port))
    # The attack: 127.0.0.3 is no proxy of this Cloud, yet claims to speak for 203.0.113.9.
    assert raw_claim(cloud, "127.0.0.3", spoof)[0] == 0
    assert raw_claim(cloud, "127.0.0.3", pp.v1_header(("203.0.113.9", 1), ("127.0.0.1", 2)))[0] == 0
    poll(lambda: "not a trusted proxy" in cloud.log_tail(200), 10, "the refusal logged")
    # A trusted proxy's v1 header is believed...
    header = pp.v1_header(("198.51.100.23", 40000), ("127.0.0.1", cloud.port))
    status, node_id = raw_claim(cloud, "127.0.0.2", header)
    assert status == 204
    assert last_address(cloud, node_id) == "198.51.100.23"
    # ...a malformed one is not...
    assert raw_claim(cloud, "127.0.0.2", b"PROXY TCP4 198.51.100.23 x 1 2\r\n")[0] == 0
    # ...and a client without one is served as itself.
    r = claim_from(cloud, cloud.url, "127.0.0.3")
    assert r.status_code == 204
    assert last_address(cloud, r.extensions["node_id"]) == "127.0.0.3"
