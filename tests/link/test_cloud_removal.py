"""Removing a node closes its live link at once, not at the next sweep."""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.fixtures.agent import AgentLauncher
from tests.fixtures.cloud import Cloud
from tests.fixtures.common import poll
from tests.fixtures.linked import link_agent

# The production keepalive: the sweeper would only notice a removal after this.
KEEPALIVE = 20.0


def test_removing_a_node_closes_its_live_link_within_two_seconds(
    start_cloud: Callable[..., Cloud], start_agent: AgentLauncher
) -> None:
    cloud = start_cloud("--keepalive", f"{KEEPALIVE:g}")
    linked = link_agent(cloud, start_agent)
    assert linked.aclk()["connected"] is True
    r = cloud.api("DELETE", f"/api/v1/spaces/{cloud.space_id}/nodes/{linked.node_id}")
    assert r.status_code == 204, r.text
    began = time.monotonic()
    st = poll(lambda: (s := linked.aclk())["terminal"] and s, 5, "the agent to stop retrying")
    took = time.monotonic() - began
    assert took < 2.0, f"the link closed {took:.2f} s after removal (keepalive {KEEPALIVE:g} s)"
    assert st["connected"] is False
    assert "tether-claim" in st["fix"], st
    assert "was removed: closing its link" in cloud.log_file.read_text()


def test_deleting_a_space_closes_the_live_links_of_its_nodes(
    start_cloud: Callable[..., Cloud], start_agent: AgentLauncher
) -> None:
    cloud = start_cloud("--keepalive", f"{KEEPALIVE:g}")
    linked = link_agent(cloud, start_agent)
    r = cloud.api("DELETE", f"/api/v1/spaces/{cloud.space_id}")
    assert r.status_code == 204, r.text
    began = time.monotonic()
    st = poll(lambda: (s := linked.aclk())["terminal"] and s, 5, "the agent to stop retrying")
    took = time.monotonic() - began
    assert took < 2.0, f"the link closed {took:.2f} s after the Space was deleted"
    assert st["connected"] is False
