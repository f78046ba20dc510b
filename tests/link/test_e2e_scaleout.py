"""Scale-out with a real agent: two Cloud processes sharing this machine's
PostgreSQL and NATS; the agent links to process A, a user reads its current CPU
through process B."""

from __future__ import annotations

from collections.abc import Callable

from tests.fixtures.agent import AgentLauncher
from tests.fixtures.cloud import Cloud
from tests.fixtures.linked import Linked, cpu_through_cloud, link_agent
from tests.fixtures.scaleout import pair


def test_real_agent_linked_to_one_process_read_through_the_other(
    start_cloud: Callable[..., Cloud],
    start_agent: AgentLauncher,
    pg_url: str,
) -> None:
    a, b = pair(start_cloud, pg_url)
    on_a = link_agent(a, start_agent)
    assert f":{a.port}/aclk" in on_a.aclk()["link_url"]
    via_b = Linked(b, on_a.agent, on_a.node_id)
    assert via_b.state() == "live"
    body = cpu_through_cloud(via_b)
    assert body["dimension_names"] == cpu_through_cloud(on_a)["dimension_names"]
    # The agent stops gracefully: process B shows it offline with the reason.
    assert on_a.agent.cli("shutdown-agent").returncode == 0
    via_b.wait_state("offline", 10)
    assert "shutdown" in via_b.node()["state_cause"]
