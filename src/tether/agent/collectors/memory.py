"""RAM use (`system.ram`, `mem.available`) in MiB from /proc/meminfo, with
Netdata's split: used = total - free - cached - buffers."""

from __future__ import annotations

from tether.agent.collectors.base import Collector
from tether.agent.collectors.meminfo import read_meminfo

MIB = 1024 * 1024


class MemoryCollector(Collector):
    name = "memory"

    def collect(self, t: int) -> None:
        m = read_meminfo()
        total = m["MemTotal"]
        free = m["MemFree"]
        buffers = m.get("Buffers", 0)
        cached = m.get("Cached", 0) + m.get("SReclaimable", 0) - m.get("Shmem", 0)
        used = total - free - buffers - cached
        ram = self.store.chart(
            "system.ram",
            "System RAM",
            "MiB",
            "ram",
            ("free", "used", "cached", "buffers"),
            chart_type="stacked",
            priority=300,
        )
        ram.store(
            t,
            {
                "free": free / MIB,
                "used": used / MIB,
                "cached": cached / MIB,
                "buffers": buffers / MIB,
            },
        )
        avail = self.store.chart(
            "mem.available",
            "Available RAM for applications",
            "MiB",
            "system",
            ("avail",),
            priority=301,
        )
        avail.store(t, {"avail": m.get("MemAvailable", free + cached + buffers) / MIB})
