"""An IPv6-only path works end to end (design.md complaint 13): the Cloud
listens dual-stack, and the agent claims and keeps its link over [::1]."""

from __future__ import annotations

import socket

import pytest

from tests.fixtures.agent import AgentLauncher
from tests.fixtures.cloud import Cloud
from tests.fixtures.common import poll
from tests.fixtures.linked import Linked, cloud_args, run_claim, trust


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this host has no IPv6 loopback")
def test_claim_link_and_relay_over_ipv6(start_cloud, start_agent: AgentLauncher) -> None:  # type: ignore[no-untyped-def]
    cloud: Cloud = start_cloud(*cloud_args())
    v6_url = f"https://[::1]:{cloud.port}"
    agent = start_agent()
    trust(agent.prefix, cloud)
    proc = run_claim(agent.prefix, cloud, f"-url={v6_url}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    node_id = agent.paths.claimed_id_file.read_text().strip()
    linked = Linked(cloud, agent, node_id)
    linked.wait_state("live", 10)

    state = linked.aclk()
    assert state["link_url"].startswith("wss://[::1]:"), state
    assert linked.node()["last_address"] == "::1"
    # A fresh agent shows system.cpu after its second sample.
    r = poll(
        lambda: (
            (r := linked.relay("data", chart="system.cpu", after=-5, points=5)).is_success and r
        ),
        10,
        "system.cpu through the relay",
        every=0.2,
    )
    assert r.json()["result"]["data"]
