"""Network traffic per interface from /proc/net/dev: `net.IF` (kilobits/s),
`net_packets.IF` (packets/s), `net_errors.IF` and `net_drops.IF` (per second)."""

from __future__ import annotations

import time

from tether.agent import host
from tether.agent.collectors.base import Collector


class NetworkCollector(Collector):
    name = "network"

    def collect(self, t: int) -> None:
        now = time.monotonic()
        for line in host.read_text(host.proc_net("dev")).splitlines()[2:]:
            name, _, rest = line.partition(":")
            iface = name.strip()
            f = [int(x) for x in rest.split()]
            rx_bytes, rx_packets, rx_errs, rx_drop = f[0], f[1], f[2], f[3]
            tx_bytes, tx_packets, tx_errs, tx_drop = f[8], f[9], f[10], f[11]
            r = self.rate
            pairs = (
                (
                    "net",
                    "Bandwidth",
                    "kilobits/s",
                    ("received", "sent"),
                    rx_bytes,
                    tx_bytes,
                    8 / 1000,
                ),
                (
                    "net_packets",
                    "Packets",
                    "packets/s",
                    ("received", "sent"),
                    rx_packets,
                    tx_packets,
                    1.0,
                ),
                (
                    "net_errors",
                    "Interface Errors",
                    "errors/s",
                    ("inbound", "outbound"),
                    rx_errs,
                    tx_errs,
                    1.0,
                ),
                (
                    "net_drops",
                    "Interface Drops",
                    "drops/s",
                    ("inbound", "outbound"),
                    rx_drop,
                    tx_drop,
                    1.0,
                ),
            )
            for prio, (kind, title, units, dims, rx, tx, scale) in enumerate(pairs):
                chart = self.store.chart(
                    f"{kind}.{iface}",
                    f"{title} ({iface})",
                    units,
                    iface,
                    dims,
                    context=f"net.{kind.removeprefix('net_') if kind != 'net' else 'net'}",
                    chart_type="area" if kind == "net" else "line",
                    priority=3000 + prio,
                )
                chart.store(
                    t,
                    {
                        dims[0]: r(f"{kind}.{iface}.rx", rx, now, scale),
                        dims[1]: r(f"{kind}.{iface}.tx", tx, now, scale),
                    },
                )
