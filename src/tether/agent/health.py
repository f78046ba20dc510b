"""A small health engine: CPU, RAM and disk-space alerts with warning and
critical levels and hysteresis, like Netdata's stock alerts.

An alert raises to WARNING when its value goes above `warn` and returns to
CLEAR only when it falls below `warn clear` (the same for CRITICAL), so a value
hovering near a threshold does not flap. Levels come from `[health]` in
tether.conf and are re-read on `tether-cli reload-health`.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from tether.agent.storage import Chart, Store, query
from tether.node.config import AgentConfig

log = logging.getLogger("tether.agent.health")

UNDEFINED, CLEAR, WARNING, CRITICAL = "UNDEFINED", "CLEAR", "WARNING", "CRITICAL"
RANK = {UNDEFINED: 0, CLEAR: 1, WARNING: 2, CRITICAL: 3}
MAX_TRANSITIONS = 1000


@dataclass
class AlertRule:
    """One alert template; `key` names its settings in `[health]`."""

    key: str
    name: str
    chart_prefix: str
    info: str
    units: str
    warn: float
    warn_clear: float
    crit: float
    crit_clear: float
    window: int
    value: Callable[[dict[str, float | None]], float | None] = field(repr=False)


def _sum(v: dict[str, float | None], *names: str) -> float | None:
    parts = [v.get(n) for n in names]
    if any(p is None for p in parts):
        return None
    return float(sum(p for p in parts if p is not None))


def _cpu(v: dict[str, float | None]) -> float | None:
    real = [x for x in v.values() if x is not None]
    return sum(real) if real else None


def _ram(v: dict[str, float | None]) -> float | None:
    used = v.get("used")
    total = _sum(v, "free", "used", "cached", "buffers")
    if used is None or not total:
        return None
    return 100.0 * used / total


def _disk(v: dict[str, float | None]) -> float | None:
    used, avail = v.get("used"), v.get("avail")
    if used is None or avail is None or used + avail <= 0:
        return None
    return 100.0 * used / (used + avail)


def default_rules() -> list[AlertRule]:
    return [
        AlertRule(
            "cpu",
            "cpu_usage",
            "system.cpu",
            "average CPU utilization",
            "%",
            85,
            75,
            95,
            85,
            600,
            _cpu,
        ),
        AlertRule(
            "ram",
            "ram_in_use",
            "system.ram",
            "system memory utilization",
            "%",
            90,
            80,
            98,
            90,
            60,
            _ram,
        ),
        AlertRule(
            "disk space",
            "disk_space_usage",
            "disk_space.",
            "disk space utilization",
            "%",
            90,
            80,
            98,
            95,
            60,
            _disk,
        ),
    ]


def status_for(value: float | None, previous: str, rule: AlertRule) -> str:
    """The new status given the old one: the clear levels apply while raised."""
    if value is None:
        return UNDEFINED
    crit_level = rule.crit_clear if previous == CRITICAL else rule.crit
    warn_level = rule.warn_clear if RANK[previous] >= RANK[WARNING] else rule.warn
    if value > crit_level:
        return CRITICAL
    if value > warn_level:
        return WARNING
    return CLEAR


@dataclass
class Alert:
    id: int
    name: str
    chart: str
    family: str
    info: str
    units: str
    status: str = UNDEFINED
    value: float | None = None
    last_status_change: int = 0
    last_updated: int = 0

    @property
    def active(self) -> bool:
        return self.status in (WARNING, CRITICAL)


class Health:
    def __init__(self, store: Store, config: AgentConfig) -> None:
        self.store = store
        self.alerts: dict[str, Alert] = {}
        self.transitions: deque[dict[str, object]] = deque(maxlen=MAX_TRANSITIONS)
        self.listeners: list[Callable[[dict[str, object]], None]] = []
        self._next_id = 1
        self._next_unique = 1
        self.load(config)

    def load(self, config: AgentConfig) -> None:
        """(Re)read `[health]`; alerts keep their status across reloads."""
        self.enabled = config.get_bool("health", "enabled", True)
        self.every = max(1, int(float(config.get("health", "check every", "10"))))
        rules = default_rules()
        for rule in rules:
            for attr, suffix in (
                ("warn", "warning"),
                ("warn_clear", "warning clear"),
                ("crit", "critical"),
                ("crit_clear", "critical clear"),
                ("window", "window"),
            ):
                raw = config.get("health", f"{rule.key} {suffix}", "")
                if raw:
                    try:
                        setattr(rule, attr, int(raw) if attr == "window" else float(raw))
                    except ValueError:
                        log.error(
                            "[health] %s %s = %r is not a number; keeping %s",
                            rule.key,
                            suffix,
                            raw,
                            getattr(rule, attr),
                        )
        self.rules = rules

    def _rules_for(self, chart: Chart) -> list[AlertRule]:
        out = []
        for r in self.rules:
            if r.chart_prefix.endswith("."):
                if chart.id.startswith(r.chart_prefix):
                    out.append(r)
            elif chart.id == r.chart_prefix:
                out.append(r)
        return out

    def evaluate(self, now: int | None = None) -> list[dict[str, object]]:
        """Recompute every alert; returns (and announces) the transitions."""
        if not self.enabled:
            return []
        now = now or int(time.time())
        changes: list[dict[str, object]] = []
        for chart in list(self.store.charts.values()):
            for rule in self._rules_for(chart):
                key = f"{chart.id}.{rule.name}"
                alert = self.alerts.get(key)
                if alert is None:
                    alert = Alert(
                        self._next_id, rule.name, chart.id, chart.family, rule.info, rule.units
                    )
                    self._next_id += 1
                    self.alerts[key] = alert
                value: float | None = None
                if chart.last_t:
                    res = query(chart, now, after=-rule.window, before=0, points=1)
                    if res.rows:
                        row = res.rows[0][1]
                        value = rule.value({d.id: row[i] for i, d in enumerate(res.dimensions)})
                new = status_for(value, alert.status, rule)
                alert.last_updated = now
                old_status, old_value = alert.status, alert.value
                alert.value = None if value is None else round(value, 3)
                if new != old_status:
                    alert.status = new
                    alert.last_status_change = now
                    t = {
                        "unique_id": self._next_unique,
                        "alarm_id": alert.id,
                        "name": rule.name,
                        "chart": chart.id,
                        "family": chart.family,
                        "when": now,
                        "old_status": old_status,
                        "status": new,
                        "old_value": old_value,
                        "value": alert.value,
                        "units": rule.units,
                        "info": rule.info,
                    }
                    self._next_unique += 1
                    self.transitions.append(t)
                    changes.append(t)
                    if RANK[new] >= RANK[WARNING] or RANK[old_status] >= RANK[WARNING]:
                        log.info(
                            "alert %s on %s: %s -> %s (value %s%s)",
                            rule.name,
                            chart.id,
                            old_status,
                            new,
                            alert.value,
                            rule.units,
                        )
        for t in changes:
            for listener in list(self.listeners):
                try:
                    listener(t)
                except Exception:
                    log.exception("alert listener failed")
        return changes

    def counts(self) -> dict[str, int]:
        c = {"normal": 0, "warning": 0, "critical": 0}
        for a in self.alerts.values():
            if a.status == WARNING:
                c["warning"] += 1
            elif a.status == CRITICAL:
                c["critical"] += 1
            elif a.status == CLEAR:
                c["normal"] += 1
        return c

    def alert_dicts(self, all_alerts: bool) -> dict[str, dict[str, object]]:
        return {
            k: asdict(a) | {"active": a.active}
            for k, a in self.alerts.items()
            if all_alerts or a.active
        }
