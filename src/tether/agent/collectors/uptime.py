"""System uptime in seconds (`system.uptime`) from /proc/uptime."""

from __future__ import annotations

from tether.agent.collectors.base import PROC, Collector, read_text


class UptimeCollector(Collector):
    name = "uptime"

    def collect(self, t: int) -> None:
        uptime = float(read_text(f"{PROC}/uptime").split()[0])
        chart = self.store.chart(
            "system.uptime", "System Uptime", "seconds", "uptime", ("uptime",), priority=1000
        )
        chart.store(t, {"uptime": uptime})
