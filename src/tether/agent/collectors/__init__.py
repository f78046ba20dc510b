"""Collectors: one module per source, each declaring its charts.

A collector is a small object with a `name` and a `collect(t)` method that
reads its source and writes one value per dimension into the store at time
`t`. It raises on failure; the scheduler logs and retries it next cycle.
"""

from __future__ import annotations

from tether.agent.collectors.base import Collector
from tether.agent.storage import Store


def default_collectors(store: Store, failing: bool = False) -> list[Collector]:
    """Every built-in collector, in chart priority order."""
    from tether.agent.collectors import (
        agent_self,
        cpu,
        disk_io,
        disk_space,
        load,
        memory,
        network,
        processes,
        swap,
        uptime,
    )

    found: list[Collector] = [
        cpu.CpuCollector(store),
        load.LoadCollector(store),
        memory.MemoryCollector(store),
        swap.SwapCollector(store),
        disk_io.DiskIoCollector(store),
        disk_space.DiskSpaceCollector(store),
        network.NetworkCollector(store),
        processes.ProcessesCollector(store),
        uptime.UptimeCollector(store),
        agent_self.AgentSelfCollector(store),
    ]
    if failing:
        from tether.agent.collectors import failing as failing_mod

        found.append(failing_mod.FailingCollector(store))
    return found


__all__ = ["Collector", "default_collectors"]
