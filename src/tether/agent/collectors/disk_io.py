"""Disk I/O per block device (`disk.DEV` in KiB/s, `disk_ops.DEV` in
operations/s) from /proc/diskstats. Loop and RAM devices are skipped."""

from __future__ import annotations

import time

from tether.agent import host
from tether.agent.collectors.base import Collector

SKIP_PREFIXES = ("loop", "ram", "zram")


class DiskIoCollector(Collector):
    name = "disk_io"

    def collect(self, t: int) -> None:
        now = time.monotonic()
        for line in host.read_text("/proc/diskstats").splitlines():
            f = line.split()
            if len(f) < 14 or f[2].startswith(SKIP_PREFIXES):
                continue
            dev = f[2]
            reads, sectors_read, writes, sectors_written = (
                int(f[3]),
                int(f[5]),
                int(f[7]),
                int(f[9]),
            )
            io = self.store.chart(
                f"disk.{dev}",
                f"Disk I/O Bandwidth ({dev})",
                "KiB/s",
                dev,
                ("reads", "writes"),
                context="disk.io",
                chart_type="area",
                priority=2000,
            )
            # Sectors are always 512 bytes in /proc/diskstats.
            io.store(
                t,
                {
                    "reads": self.rate(f"{dev}.sr", sectors_read, now, 0.5),
                    "writes": self.rate(f"{dev}.sw", sectors_written, now, 0.5),
                },
            )
            ops = self.store.chart(
                f"disk_ops.{dev}",
                f"Disk Completed I/O Operations ({dev})",
                "operations/s",
                dev,
                ("reads", "writes"),
                context="disk.ops",
                priority=2001,
            )
            ops.store(
                t,
                {
                    "reads": self.rate(f"{dev}.r", reads, now),
                    "writes": self.rate(f"{dev}.w", writes, now),
                },
            )
