"""`[web] allow connections from`: Netdata-style simple patterns.

A space-separated list of patterns matched against the client's IP address;
`*` matches anything, `!pattern` rejects, the first match decides, no match
rejects. `localhost` stands for the loopback addresses.
"""

from __future__ import annotations

import fnmatch
import ipaddress

LOOPBACK_ALIASES = {"localhost"}


class AccessList:
    def __init__(self, spec: str) -> None:
        self.spec = spec.strip() or "*"
        self.patterns = self.spec.split()

    @property
    def allows_all(self) -> bool:
        return self.patterns == ["*"]

    def allows(self, ip: str | None) -> bool:
        if self.allows_all:
            return True
        if not ip:
            return False  # e.g. a Unix socket peer: never via HTTP here
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            addr = None
        # IPv4 clients of a dual-stack socket show up as ::ffff:a.b.c.d.
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
            ip = str(addr)
        for pattern in self.patterns:
            negate = pattern.startswith("!")
            p = pattern[1:] if negate else pattern
            if p in LOOPBACK_ALIASES:
                matched = addr is not None and addr.is_loopback
            else:
                matched = fnmatch.fnmatchcase(ip, p)
            if matched:
                return not negate
        return False
