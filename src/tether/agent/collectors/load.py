"""System load averages (`system.load`) from /proc/loadavg."""

from __future__ import annotations

from tether.agent import host
from tether.agent.collectors.base import Collector


class LoadCollector(Collector):
    name = "load"

    def collect(self, t: int) -> None:
        parts = host.read_text("/proc/loadavg").split()
        chart = self.store.chart(
            "system.load",
            "System Load Average",
            "load",
            "load",
            ("load1", "load5", "load15"),
            priority=200,
        )
        chart.store(
            t, {"load1": float(parts[0]), "load5": float(parts[1]), "load15": float(parts[2])}
        )
