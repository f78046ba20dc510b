"""The agent's own cost: `tether.agent_cpu` (percent of one core, user and
system) and `tether.agent_mem` (resident memory in MiB)."""

from __future__ import annotations

import time

import psutil

from tether.agent.collectors.base import Collector
from tether.agent.storage import Store

MIB = 1024 * 1024


class AgentSelfCollector(Collector):
    name = "agent_self"

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self._proc = psutil.Process()

    def collect(self, t: int) -> None:
        now = time.monotonic()
        with self._proc.oneshot():
            cpu = self._proc.cpu_times()
            rss = self._proc.memory_info().rss
        self.store.chart(
            "tether.agent_cpu",
            "Tether agent CPU usage",
            "percentage",
            "tether",
            ("user", "system"),
            chart_type="stacked",
            priority=90000,
        ).store(
            t,
            {
                "user": self.rate("user", cpu.user, now, 100.0),
                "system": self.rate("system", cpu.system, now, 100.0),
            },
        )
        self.store.chart(
            "tether.agent_mem", "Tether agent memory", "MiB", "tether", ("rss",), priority=90001
        ).store(t, {"rss": rss / MIB})
