"""The agent's own cost: `tether.agent_cpu` (percent of one core, user and
system) and `tether.agent_mem` (resident memory in MiB).

This is the agent's own process, not host data: it is read from this process's
own view (getrusage, /proc/self), never under the host root, where the PID
would be the container's and not the host's."""

from __future__ import annotations

import os
import resource
import time

from tether.agent.collectors.base import Collector

MIB = 1024 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")


def own_rss() -> int:
    """Resident bytes of this process (/proc/self/statm, field 2 in pages)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class AgentSelfCollector(Collector):
    name = "agent_self"

    def collect(self, t: int) -> None:
        now = time.monotonic()
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        rss = own_rss()
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
                "user": self.rate("user", cpu.ru_utime, now, 100.0),
                "system": self.rate("system", cpu.ru_stime, now, 100.0),
            },
        )
        self.store.chart(
            "tether.agent_mem", "Tether agent memory", "MiB", "tether", ("rss",), priority=90001
        ).store(t, {"rss": rss / MIB})
