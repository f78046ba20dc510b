"""Space per mounted filesystem (`disk_space.MOUNT` in GiB, with `/` as `_`).

The mount list is re-read every minute; a mount that disappears or cannot be
read is skipped for that cycle (and logged by the scheduler via the error) while
the others keep reporting.
"""

from __future__ import annotations

import os
import time

import psutil

from tether.agent.collectors.base import Collector
from tether.agent.storage import Store

GIB = 1024**3
REFRESH_MOUNTS = 60.0


def chart_suffix(mountpoint: str) -> str:
    return "_" + mountpoint.strip("/").replace("/", "_") if mountpoint != "/" else "_"


class DiskSpaceCollector(Collector):
    name = "disk_space"

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self._mounts: list[str] = []
        self._mounts_at = 0.0

    def mounts(self) -> list[str]:
        now = time.monotonic()
        if not self._mounts or now - self._mounts_at > REFRESH_MOUNTS:
            found = [p.mountpoint for p in psutil.disk_partitions(all=False)]
            self._mounts = sorted(set(found) | {"/"})
            self._mounts_at = now
        return self._mounts

    def collect(self, t: int) -> None:
        failed: list[str] = []
        for mount in self.mounts():
            try:
                st = os.statvfs(mount)
            except OSError as exc:
                failed.append(f"{mount}: {exc.strerror}")
                continue
            if st.f_blocks == 0:
                continue
            chart = self.store.chart(
                f"disk_space.{chart_suffix(mount)}",
                f"Disk Space Usage for {mount}",
                "GiB",
                mount,
                ("avail", "used", "reserved_for_root"),
                context="disk.space",
                chart_type="stacked",
                priority=2100,
            )
            avail = st.f_bavail * st.f_frsize
            free = st.f_bfree * st.f_frsize
            total = st.f_blocks * st.f_frsize
            chart.store(
                t,
                {
                    "avail": avail / GIB,
                    "used": (total - free) / GIB,
                    "reserved_for_root": (free - avail) / GIB,
                },
            )
        if failed:
            self._mounts = []  # re-read the mount table next time
            raise OSError("cannot read " + "; ".join(failed))
