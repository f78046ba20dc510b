"""Issue 12, item 1 and 4: the proxy given to the claim (`-proxy=`) is the
link's proxy, with no other setting. For each kind (SOCKS5, SOCKS5h, HTTP,
HTTPS = stunnel4 in front of tinyproxy), with authentication: claim through
it into a node whose tether.conf has no proxy, see the link use it (killing
the proxy takes the node offline; restarting it brings the node back)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fixtures.agent import AgentLauncher
from tests.fixtures.cloud import Cloud
from tests.fixtures.common import poll
from tests.fixtures.linked import (
    Linked,
    Restartable,
    cloud_args,
    cpu_through_cloud,
    run_claim,
    trust,
)
from tests.fixtures.proxies import ProxyProcess, run_http_proxy, run_socks_proxy
from tests.fixtures.tls_proxy import run_https_proxy

USER, PASSWORD = "carol", "p@ss:w/rd%"  # SOCKS: a password that needs percent-encoding
HTTP_USER, HTTP_PASSWORD = "bob", "s3cr3t-pw"  # tinyproxy's BasicAuth takes no specials


@pytest.fixture
def proxy_of_kind(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[ProxyProcess, str, list[str]]]:
    """(proxy process, the -proxy= URL, extra claim flags)."""
    kind: str = request.param
    if kind in ("socks5", "socks5h"):
        with run_socks_proxy(tmp_path / "socks", USER, PASSWORD) as p:
            yield p, p.url(kind), []
    elif kind == "http":
        with run_http_proxy(tmp_path / "http", HTTP_USER, HTTP_PASSWORD) as p:
            yield p, p.url(), []
    elif kind == "https":
        with run_https_proxy(tmp_path / "https", HTTP_USER, HTTP_PASSWORD) as (p, ca):
            yield p, p.url("https"), [f"-proxy-ca={ca}"]
    else:  # an https proxy without authentication
        with run_https_proxy(tmp_path / "https") as (p, ca):
            yield p, p.url("https"), [f"-proxy-ca={ca}"]


@pytest.mark.parametrize("proxy_of_kind", ["socks5", "socks5h", "http", "https"], indirect=True)
def test_claim_proxy_is_the_link_proxy(
    start_cloud: Callable[..., Cloud],
    start_agent: AgentLauncher,
    proxy_of_kind: tuple[ProxyProcess, str, list[str]],
    restartable: Callable[[ProxyProcess], Restartable],
) -> None:
    proxy, url, extra = proxy_of_kind
    cloud = start_cloud(*cloud_args())
    agent = start_agent()  # tether.conf has no proxy at all
    trust(agent.prefix, cloud)
    proc = run_claim(agent.prefix, cloud, f"-proxy={url}", *extra)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    linked = Linked(cloud, agent, agent.paths.claimed_id_file.read_text().strip())
    linked.wait_state("live", 20)

    st = linked.wait_agent_connected()
    assert f"127.0.0.1:{proxy.port}" in st["proxy"]
    assert ("***" in st["proxy"]) is (proxy.password is not None)
    assert st["proxy"].startswith(url.split(":", 1)[0] + "://")
    assert "-proxy at claim time" in st["proxy_source"]
    assert proxy.password is None or proxy.password not in str(st)
    assert "p%40ss" not in str(st)
    info = agent.info()
    assert info["cloud-proxy"] == st["proxy"] and info["cloud-proxy-source"] == st["proxy_source"]
    # A proxy password in cloud.conf: readable by the agent's user only.
    mode = 0o600 if proxy.password else 0o640
    assert agent.paths.cloud_conf_file.stat().st_mode & 0o777 == mode
    if extra:
        assert agent.paths.proxy_ca_file.exists()
    cpu_through_cloud(linked)

    p = restartable(proxy)
    p.kill()
    linked.wait_state("offline", 15)
    err = poll(
        lambda: (e := linked.aclk()["last_error"]) and f"127.0.0.1:{proxy.port}" in e and e,
        20,
        "aclk-state to name the unreachable proxy",
    )
    assert proxy.password is None or proxy.password not in err
    began = time.monotonic()
    p.start()
    linked.wait_state("live", 40)
    print(f"{url.split(':')[0]}: live {time.monotonic() - began:.2f} s after the proxy came back")
    linked.wait_agent_connected()
