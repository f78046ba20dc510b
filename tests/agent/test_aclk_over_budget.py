"""The agent's reading of an over-budget close, in-process: it never comes back at once."""

from __future__ import annotations

from pathlib import Path

from tether.agent.aclk import AclkClient
from tether.node.cloud_d import ClaimState
from tether.paths import AgentPaths
from tether.protocol.backoff import Backoff
from tether.protocol.frames import Hello
from tether.protocol.link import CLOSE_OVER_BUDGET, OVER_BUDGET_RECONNECT_SECONDS


class NoJitter:
    def uniform(self, a: float, b: float) -> float:
        return a


def test_a_4008_close_is_transient_with_a_reconnect_floor(tmp_path: Path) -> None:
    client = AclkClient(
        AgentPaths.from_prefix(tmp_path),
        ClaimState(enabled=True, claimed_id="n", cloud_base_url="https://c"),
        "none",
        hello_provider=lambda: Hello(agent_version="", hostname="", os="", machine_guid=""),
        query_handler=lambda path, query: (200, "application/json", b"{}"),
    )
    fault = client._closed_fault_code(CLOSE_OVER_BUDGET, "over budget")
    assert not fault.terminal
    assert fault.retry_after == OVER_BUDGET_RECONNECT_SECONDS
    assert "over budget" in str(fault) and "(4008)" in str(fault)
    # The floor holds even on the first retry, whose own delay would be about 1 s.
    assert Backoff(1.0, 300.0, rng=NoJitter()).next_delay(fault.retry_after) == 60.0
