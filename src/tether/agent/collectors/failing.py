"""A diagnostic collector that always raises, enabled with
`[debug] failing collector = yes`: it shows (and tests prove) that one broken
collector is logged and retried without stopping the others."""

from __future__ import annotations

from tether.agent.collectors.base import Collector


class FailingCollector(Collector):
    name = "failing"

    def collect(self, t: int) -> None:
        raise RuntimeError(
            "diagnostic collector failing on purpose ([debug] failing collector = yes)"
        )
