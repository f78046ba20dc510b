"""Processes and threads: `system.processes` (running, blocked, from
/proc/stat), `system.active_processes` (PIDs in /proc), `system.threads`
(kernel scheduling entities from /proc/loadavg), `system.forks` (per second)."""

from __future__ import annotations

import time

from tether.agent import host
from tether.agent.collectors.base import Collector


class ProcessesCollector(Collector):
    name = "processes"

    def collect(self, t: int) -> None:
        running = blocked = forks = 0
        for line in host.read_text("/proc/stat").splitlines():
            if line.startswith("procs_running "):
                running = int(line.split()[1])
            elif line.startswith("procs_blocked "):
                blocked = int(line.split()[1])
            elif line.startswith("processes "):
                forks = int(line.split()[1])
        s = self.store
        s.chart(
            "system.processes",
            "System Processes",
            "processes",
            "processes",
            ("running", "blocked"),
            priority=600,
        ).store(t, {"running": running, "blocked": blocked})
        active = sum(1 for n in host.listdir("/proc") if n.isdigit())
        s.chart(
            "system.active_processes",
            "System Active Processes",
            "processes",
            "processes",
            ("active",),
            priority=601,
        ).store(t, {"active": active})
        threads = int(host.read_text("/proc/loadavg").split()[3].split("/")[1])
        s.chart(
            "system.threads", "System Threads", "threads", "processes", ("threads",), priority=602
        ).store(t, {"threads": threads})
        s.chart(
            "system.forks",
            "Started Processes",
            "processes/s",
            "processes",
            ("started",),
            priority=603,
        ).store(t, {"started": self.rate("forks", forks, time.monotonic())})
