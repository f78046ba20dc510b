"""System uptime in seconds (`system.uptime`) from /proc/uptime."""

from __future__ import annotations

from tether.agent import host
from tether.agent.collectors.base import Collector


class UptimeCollector(Collector):
    name = "uptime"

    def collect(self, t: int) -> None:
        uptime = float(host.read_text("/proc/uptime").split()[0])
        chart = self.store.chart(
            "system.uptime", "System Uptime", "seconds", "uptime", ("uptime",), priority=1000
        )
        chart.store(t, {"uptime": uptime})
