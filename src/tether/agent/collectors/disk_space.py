"""Space per mounted filesystem (`disk_space.MOUNT` in GiB, with `/` as `_`).

The mount list is re-read every minute; a mount that disappears or cannot be
read is skipped for that cycle (and logged by the scheduler via the error) while
the others keep reporting.

Under a host root the mounts are the host's (its init's mountinfo) and each is
measured at ROOT/MOUNTPOINT only when that path is the same filesystem (same
device number): `-v /proc:/host/proc` alone leaves /host on the container's own
disk, whose space must not pass for the host's. Mounts not visible there are
said once in the log and not reported; `-v /:/host:ro,rslave` makes them visible.
"""

from __future__ import annotations

import logging
import os
import re
import time

import psutil

from tether.agent import host
from tether.agent.collectors.base import Collector
from tether.agent.storage import Store

GIB = 1024**3
REFRESH_MOUNTS = 60.0


def chart_suffix(mountpoint: str) -> str:
    return "_" + mountpoint.strip("/").replace("/", "_") if mountpoint != "/" else "_"


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def host_mounts() -> list[tuple[str, str]]:
    """(mount point, path to measure it at) for the host's disk filesystems,
    like psutil.disk_partitions(all=False): types /proc/filesystems does not
    mark `nodev` (and zfs)."""
    disk_types = {"zfs"}
    for line in host.read_text("/proc/filesystems").splitlines():
        kind, _, name = line.partition("\t")
        if not kind.strip():
            disk_types.add(name.strip())
    devices: dict[str, int] = {}
    for line in host.read_text("/proc/1/mountinfo").splitlines():
        left, sep, right = line.partition(" - ")
        f = left.split()
        if not sep or len(f) < 5 or right.split()[0] not in disk_types:
            continue
        major, _, minor = f[2].partition(":")
        devices[_unescape(f[4])] = os.makedev(int(major), int(minor))
    out: list[tuple[str, str]] = []
    hidden: list[str] = []
    for mount, dev in sorted(devices.items()):
        at = host.path(mount).rstrip("/") or "/"
        try:
            same = os.stat(at).st_dev == dev
        except OSError:
            same = False
        if same:
            out.append((mount, at))
        else:
            hidden.append(mount)
    if hidden:
        host.say_once(
            logging.WARNING,
            f"disk_space: the host's filesystems {', '.join(hidden)} are not visible under "
            f"{host.root()} and are not reported (this container's own disk is not shown in "
            f"their place); they are measured when the host's / is mounted there with its "
            f"submounts (-v /:{host.root()}:ro,rslave)",
        )
    return out


class DiskSpaceCollector(Collector):
    name = "disk_space"

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self._mounts: list[tuple[str, str]] = []
        self._mounts_at = 0.0
        self._stale = True

    def mounts(self) -> list[tuple[str, str]]:
        """(mount point, path to measure it at), re-read every minute."""
        now = time.monotonic()
        if self._stale or now - self._mounts_at > REFRESH_MOUNTS:
            if host.root():
                self._mounts = host_mounts()
            else:
                found = {p.mountpoint for p in psutil.disk_partitions(all=False)}
                self._mounts = [(m, m) for m in sorted(found | {"/"})]
            self._mounts_at = now
            self._stale = False
        return self._mounts

    def collect(self, t: int) -> None:
        failed: list[str] = []
        for mount, at in self.mounts():
            try:
                st = os.statvfs(at)
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
            self._stale = True  # re-read the mount table next time
            raise OSError("cannot read " + "; ".join(failed))
