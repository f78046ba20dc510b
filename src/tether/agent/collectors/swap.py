"""Swap use (`mem.swap`) in MiB from /proc/meminfo."""

from __future__ import annotations

from tether.agent.collectors.base import Collector
from tether.agent.collectors.meminfo import read_meminfo

MIB = 1024 * 1024


class SwapCollector(Collector):
    name = "swap"

    def collect(self, t: int) -> None:
        m = read_meminfo()
        total = m.get("SwapTotal", 0)
        free = m.get("SwapFree", 0)
        chart = self.store.chart(
            "mem.swap",
            "System Swap",
            "MiB",
            "swap",
            ("free", "used"),
            chart_type="stacked",
            priority=310,
        )
        chart.store(t, {"free": free / MIB, "used": (total - free) / MIB})
