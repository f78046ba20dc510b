"""The health engine's levels and hysteresis, on a real Store."""

from __future__ import annotations

from pathlib import Path

from tether.agent.health import CLEAR, CRITICAL, WARNING, Health
from tether.node.config import load_config

T0 = 1_700_000_040


def ram_chart_health(tmp_path: Path) -> tuple[Health, object]:
    conf = tmp_path / "tether.conf"
    conf.write_text(
        "[health]\n    ram warning = 50\n    ram warning clear = 40\n    ram critical = 80\n"
        "    ram critical clear = 70\n    ram window = 1\n"
    )
    from tether.agent.storage import Store

    store = Store()
    chart = store.chart("system.ram", "RAM", "MiB", "ram", ("free", "used", "cached", "buffers"))
    return Health(store, load_config(conf)), chart


def test_hysteresis_raises_and_clears_at_different_levels(tmp_path: Path) -> None:
    health, chart = ram_chart_health(tmp_path)
    seen = []
    health.listeners.append(seen.append)
    statuses = []
    # used percent over time: up through warning and critical, then back down.
    for i, used in enumerate([30, 55, 45, 85, 75, 65, 45, 35]):
        t = T0 + i
        chart.store(t, {"free": 100.0 - used, "used": float(used), "cached": 0.0, "buffers": 0.0})
        health.evaluate(t)
        statuses.append(health.alerts["system.ram.ram_in_use"].status)
    # 45 stays WARNING (above warn clear 40), 75 stays CRITICAL (above crit clear 70).
    assert statuses == [CLEAR, WARNING, WARNING, CRITICAL, CRITICAL, WARNING, WARNING, CLEAR]
    assert [(t["old_status"], t["status"]) for t in seen] == [
        ("UNDEFINED", CLEAR),
        (CLEAR, WARNING),
        (WARNING, CRITICAL),
        (CRITICAL, WARNING),
        (WARNING, CLEAR),
    ]
    assert health.counts() == {"normal": 1, "warning": 0, "critical": 0}
