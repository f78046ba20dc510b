"""Removing a node closes its live link at once, not at the next sweep."""

from __future__ import annotations

from collections.abc import Callable

from tests.fixtures.agent import AgentLauncher
from tests.fixtures.cloud import Cloud
from tests.fixtures.common import poll
from tests.fixtures.linked import link_agent
from tests.fixtures.sweeps import last_heartbeat, quiet_heartbeat

# The sweeper would also close the link, at its next sweep (every 30 s with this
# keepalive): a close with no sweep in between is the removal's own.
KEEPALIVE = 30.0


def test_removing_a_node_closes_its_live_link_before_any_sweep(
    start_cloud: Callable[..., Cloud], start_agent: AgentLauncher
) -> None:
    cloud = start_cloud("--keepalive", f"{KEEPALIVE:g}")
    linked = link_agent(cloud, start_agent)
    linked.wait_agent_connected()
    beat = quiet_heartbeat(cloud, KEEPALIVE)
    r = cloud.api("DELETE", f"/api/v1/spaces/{cloud.space_id}/nodes/{linked.node_id}")
    assert r.status_code == 204, r.text
    st = poll(lambda: (s := linked.aclk())["terminal"] and s, 20, "the agent to stop retrying")
    assert last_heartbeat(cloud) == beat, "a sweep closed the link, not the removal"
    assert st["connected"] is False
    assert "tether-claim" in st["fix"], st
    assert "was removed: closing its link" in cloud.log_file.read_text()


def test_deleting_a_space_closes_the_live_links_of_its_nodes(
    start_cloud: Callable[..., Cloud], start_agent: AgentLauncher
) -> None:
    cloud = start_cloud("--keepalive", f"{KEEPALIVE:g}")
    linked = link_agent(cloud, start_agent)
    beat = quiet_heartbeat(cloud, KEEPALIVE)
    r = cloud.api("DELETE", f"/api/v1/spaces/{cloud.space_id}")
    assert r.status_code == 204, r.text
    st = poll(lambda: (s := linked.aclk())["terminal"] and s, 20, "the agent to stop retrying")
    assert last_heartbeat(cloud) == beat, "a sweep closed the link, not the Space's deletion"
    assert st["connected"] is False
