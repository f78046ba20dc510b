"""The link through real proxies set in `[cloud] proxy`: microsocks (SOCKS5 with
a user and a password that needs percent-encoding) and tinyproxy (HTTP CONNECT
with Basic auth). The claim and the link use the same setting; killing the
proxy takes the node offline and bringing it back makes it live again."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.fixtures.agent import AgentLauncher
from tests.fixtures.cloud import Cloud
from tests.fixtures.common import poll
from tests.fixtures.linked import Linked, Restartable, cloud_args, cpu_through_cloud, link_agent
from tests.fixtures.proxies import ProxyProcess


def proxied_round_trip(
    cloud: Cloud,
    start_agent: AgentLauncher,
    proxy: ProxyProcess,
    url: str,
    restartable: Callable[[ProxyProcess], Restartable],
) -> Linked:
    linked = link_agent(cloud, start_agent, proxy=url)
    st = linked.aclk()
    assert st["connected"] is True
    assert proxy.password and proxy.password not in str(st), "the proxy password leaked"
    assert f"127.0.0.1:{proxy.port}" in st["proxy"] and "***" in st["proxy"]
    assert "[cloud] proxy" in st["proxy_source"]
    log = linked.agent.log_text()
    assert f"127.0.0.1:{proxy.port}" in log and proxy.password not in log
    cpu_through_cloud(linked)

    # Cut the proxy: the Cloud sees the link die, the agent backs off.
    p = restartable(proxy)
    p.kill()
    took = linked.wait_state("offline", 10)
    print(f"offline {took:.2f} s after the proxy was killed")
    poll(lambda: linked.agent.info()["aclk-available"] is False, 10, "aclk-available false")
    # The next attempts fail at the proxy, and aclk-state names it.
    last_error = poll(
        lambda: (e := linked.aclk()["last_error"]) and f"127.0.0.1:{proxy.port}" in e and e,
        15,
        "aclk-state to name the unreachable proxy",
    )
    print(f"aclk-state while the proxy is down: {last_error}")
    assert proxy.password not in last_error

    # Proxy back: live again through it.
    began = time.monotonic()
    p.start()
    linked.wait_state("live", 30)
    print(f"live {time.monotonic() - began:.2f} s after the proxy came back")
    cpu_through_cloud(linked)
    return linked


@pytest.mark.parametrize("scheme", ["socks5", "socks5h"])
def test_link_through_socks5_with_credentials(
    start_cloud: Callable[..., Cloud],
    start_agent: AgentLauncher,
    socks_proxy_auth: ProxyProcess,
    restartable: Callable[[ProxyProcess], Restartable],
    scheme: str,
) -> None:
    cloud = start_cloud(*cloud_args())
    url = socks_proxy_auth.url(scheme)
    proxied_round_trip(cloud, start_agent, socks_proxy_auth, url, restartable)


def test_link_through_http_connect_with_credentials(
    start_cloud: Callable[..., Cloud],
    start_agent: AgentLauncher,
    http_proxy_auth: ProxyProcess,
    restartable: Callable[[ProxyProcess], Restartable],
) -> None:
    cloud = start_cloud(*cloud_args())
    linked = proxied_round_trip(
        cloud, start_agent, http_proxy_auth, http_proxy_auth.url(), restartable
    )
    # The link really went through tinyproxy: it logged CONNECTs to the Cloud's port.
    assert f":{cloud.port}" in http_proxy_auth.log_text()
    linked.wait_agent_connected()
