"""CPU utilisation by state, total (`system.cpu`) and per core (`cpu.cpuN`),
from /proc/stat. Values are percent of the time since the last reading; idle
is not a dimension (usage = sum of the dimensions), as in Netdata."""

from __future__ import annotations

from tether.agent import host
from tether.agent.collectors.base import Collector
from tether.agent.storage import NAN, Store

STATES = (
    "user",
    "nice",
    "system",
    "idle",
    "iowait",
    "irq",
    "softirq",
    "steal",
    "guest",
    "guest_nice",
)
SHOWN = ("guest_nice", "guest", "steal", "softirq", "irq", "user", "system", "nice", "iowait")


class CpuCollector(Collector):
    name = "cpu"

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self._last: dict[str, list[int]] = {}

    def collect(self, t: int) -> None:
        for line in host.read_text("/proc/stat").splitlines():
            if not line.startswith("cpu"):
                break
            parts = line.split()
            name = parts[0]
            ticks = [int(x) for x in parts[1:11]]
            ticks += [0] * (10 - len(ticks))
            # guest time is already counted in user/nice: remove it there.
            ticks[0] -= ticks[8]
            ticks[1] -= ticks[9]
            if name == "cpu":
                chart = self.store.chart(
                    "system.cpu",
                    "Total CPU utilization",
                    "percentage",
                    "cpu",
                    SHOWN,
                    chart_type="stacked",
                    priority=100,
                )
            else:
                chart = self.store.chart(
                    f"cpu.{name}",
                    f"Core utilization ({name})",
                    "percentage",
                    "utilization",
                    SHOWN,
                    context="cpu.cpu",
                    chart_type="stacked",
                    priority=1000 + int(name[3:]),
                )
            prev = self._last.get(name)
            self._last[name] = ticks
            if prev is None:
                chart.store(t, {})
                continue
            deltas = [max(0, a - b) for a, b in zip(ticks, prev, strict=True)]
            total = sum(deltas)
            if total <= 0:
                chart.store(t, {d: NAN for d in SHOWN})
                continue
            chart.store(
                t, {s: 100.0 * deltas[i] / total for i, s in enumerate(STATES) if s in SHOWN}
            )
