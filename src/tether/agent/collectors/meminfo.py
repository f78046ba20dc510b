"""Parse /proc/meminfo (shared by the memory and swap collectors)."""

from __future__ import annotations

from tether.agent import host


def read_meminfo() -> dict[str, int]:
    """Field name to bytes."""
    out: dict[str, int] = {}
    for line in host.read_text("/proc/meminfo").splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields:
            value = int(fields[0])
            out[key] = value * 1024 if len(fields) > 1 else value
    return out
