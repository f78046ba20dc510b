"""Connection failures named by hop, from real failures on loopback."""

from __future__ import annotations

import socket
import ssl

import httpx
import pytest

from tests.fixtures.common import free_port
from tests.fixtures.proxies import ProxyProcess
from tether.net.diagnose import describe_connect_error, describe_tls_error
from tether.net.proxy import resolve_proxy


def test_refused_direct_names_host_and_port() -> None:
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    with pytest.raises(httpx.ConnectError) as info:
        httpx.get(url, trust_env=False)
    msg = describe_connect_error(info.value, url, resolve_proxy("none", url))
    assert msg.startswith("TCP:") and f"127.0.0.1:{port} refused" in msg


def test_dns_failure_names_the_host() -> None:
    # A real resolver error produced locally (AI_NUMERICHOST: no query leaves the host).
    with pytest.raises(socket.gaierror) as gai:
        socket.getaddrinfo("cloud.example.invalid", 443, flags=socket.AI_NUMERICHOST)
    try:
        raise httpx.ConnectError("resolve failed") from gai.value
    except httpx.ConnectError as exc:
        msg = describe_connect_error(exc, "https://cloud.example.invalid", None)
    assert msg.startswith("DNS:") and "'cloud.example.invalid'" in msg


def test_dns_failure_through_proxy_names_the_proxy_host() -> None:
    proxy = resolve_proxy("http://proxy.example.invalid:3128", "https://c.example")
    with pytest.raises(socket.gaierror) as gai:
        socket.getaddrinfo("proxy.example.invalid", 3128, flags=socket.AI_NUMERICHOST)
    try:
        raise httpx.ConnectError("x") from gai.value
    except httpx.ConnectError as exc:
        msg = describe_connect_error(exc, "https://c.example", proxy)
    assert "proxy's host name 'proxy.example.invalid'" in msg


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (10, "has expired"),
        (20, "issued by 'Tether Test CA' is not trusted"),
        (19, "cloud_fullchain.pem"),
        (62, "not valid for cloud.example"),
    ],
)
def test_tls_verify_codes(code: int, words: str) -> None:
    err = ssl.SSLCertVerificationError(1, "certificate verify failed")
    err.verify_code = code
    err.verify_message = "reason"
    assert words in describe_tls_error(err, "cloud.example", "Tether Test CA")


def test_invalid_url_is_named() -> None:
    url = "https://cloud..invalid:8443"
    with pytest.raises(UnicodeError) as info:
        httpx.get(url, trust_env=False)
    assert "is not valid" in describe_connect_error(info.value, url, None)


def _ws_error(url: str, proxy_url: str) -> str:
    """Connect the way the link does (websockets) and describe the failure."""
    import asyncio

    import websockets

    choice = resolve_proxy(proxy_url, url)

    async def go() -> str:
        try:
            async with websockets.connect(url, proxy=choice.url, open_timeout=10):
                return "connected"
        except Exception as exc:
            return describe_connect_error(exc, url, choice)

    return asyncio.run(go())


@pytest.mark.proxy
def test_link_client_errors_through_real_proxies(
    socks_proxy_auth: ProxyProcess, http_proxy_auth: ProxyProcess
) -> None:
    url = f"wss://127.0.0.1:{free_port()}/aclk"
    msg = _ws_error(url, socks_proxy_auth.url("socks5h", password="badpass"))
    assert "rejected the user or password" in msg and "badpass" not in msg
    msg = _ws_error(url, socks_proxy_auth.url("socks5", auth=False))
    assert "needs a user and password" in msg
    msg = _ws_error(url, socks_proxy_auth.url("socks5h"))  # good login, target refused
    assert "could not reach" in msg and url.split("/")[2] in msg
    msg = _ws_error(url, http_proxy_auth.url(password="badpass"))
    assert "proxy authentication failed" in msg and "badpass" not in msg
    msg = _ws_error(url, f"socks5h://127.0.0.1:{free_port()}")
    assert msg.startswith("TCP:") and "the proxy socks5h://127.0.0.1:" in msg
