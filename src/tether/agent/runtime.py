"""The running agent: its identity, store, collectors, health engine and the
hooks the link (ACLK) plugs into.

The link engineer's object is attached with `attach_link(obj)`; it must have
`status() -> dict` (merged into `link_status()`, with at least `connected`).
It may add async shutdown hooks (`add_shutdown_hook`) to tell the Cloud why
the agent stops, and listen to alert transitions (`add_alert_listener`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from tether import __version__
from tether.agent import host
from tether.agent.collectors import Collector, default_collectors
from tether.agent.health import Health
from tether.agent.storage import Store
from tether.node import host_labels
from tether.node.cloud_d import ClaimState, load_claim_state
from tether.node.config import AgentConfig, load_config
from tether.paths import AgentPaths

log = logging.getLogger("tether.agent")


class LinkLike(Protocol):
    def status(self) -> dict[str, Any]: ...


# Set by the entry point (agent/main.py), which alone imports tether.claim:
# claim from the environment / claim.conf (True when claimed), and a claim
# with (token, rooms, url) from the dashboard, answering (claimed, exit code, message).
AutoClaim = Callable[[], bool]
DashboardClaim = Callable[[str, list[str], str], tuple[bool, int, str]]


class Agent:
    def __init__(self, paths: AgentPaths, config: AgentConfig, machine_guid: str) -> None:
        self.paths = paths
        self.config = config
        self.machine_guid = machine_guid
        self.started = time.time()
        self.update_every = max(1, config.get_int("global", "update every"))
        history = max(60, config.get_int("global", "history seconds"))
        self.store = Store(history_seconds=history, update_every=self.update_every)
        failing = config.get_bool("debug", "failing collector", False)
        disabled = {k for k in self._plugin_names() if not self._plugin_enabled(k)}
        self.collectors: list[Collector] = [
            c for c in default_collectors(self.store, failing=failing) if c.name not in disabled
        ]
        self.collector_errors: dict[str, str] = {}
        self.health = Health(self.store, config)
        self.claim: ClaimState = load_claim_state(paths)
        self.link: LinkLike | None = None
        self.auto_claim: AutoClaim | None = None
        self.dashboard_claim: DashboardClaim | None = None
        self.shutdown_hooks: list[Callable[[str], Awaitable[None]]] = []
        # Called with the time of each collection (the stream child sends it).
        self.collect_listeners: list[Callable[[int], None]] = []
        # Set by tether.agent.main when [stream] makes this agent a parent / child.
        self.stream_parent: Any = None
        self.stream_child: Any = None
        self.stop_event = asyncio.Event()
        self.stop_reason = ""
        self.last_cycle_ms = 0.0
        self.cycles = 0
        self.hostname = config.get("global", "hostname") or host.hostname()
        # [host labels] of tether.conf, sent in Hello; `tether-cli reload-labels`
        # re-reads them and tells the listeners (the link) of a change.
        self.host_labels, problems = host_labels.read(config.path)
        for why in problems:
            log.warning("%s", why)
        self.labels_listeners: list[Callable[[dict[str, str]], None]] = []
        osr = host.os_release()  # the host's, under TETHER_HOST_ROOT
        uname = platform.uname()
        self.os_info = {
            "os_name": osr.get("NAME", uname.system),
            "os_id": osr.get("ID", uname.system.lower()),
            "os_version": osr.get("VERSION", osr.get("VERSION_ID", "")),
            "kernel_name": uname.system,
            "kernel_version": uname.release,
            "architecture": uname.machine,
        }

    # -- configuration ---------------------------------------------------

    def _plugin_names(self) -> list[str]:
        return [
            "cpu",
            "load",
            "memory",
            "swap",
            "disk_io",
            "disk_space",
            "network",
            "processes",
            "uptime",
            "agent_self",
        ]

    def _plugin_enabled(self, name: str) -> bool:
        return self.config.get_bool("plugins", name, True)

    def reload_claiming_state(self) -> ClaimState:
        self.claim = load_claim_state(self.paths)
        log.info(
            "claiming state reloaded: enabled=%s claimed=%s",
            self.claim.enabled,
            bool(self.claim.claimed_id),
        )
        reload = getattr(self.link, "reload_claiming_state", None)
        if callable(reload):
            reload(self.claim)
        return self.claim

    def reload_labels(self) -> tuple[bool, list[str]]:
        """Re-read [host labels]; (changed, problems). A change goes to the
        Cloud at once if the link is up, else in the next Hello."""
        labels, problems = host_labels.read(self.config.path)
        for why in problems:
            log.warning("%s", why)
        changed = labels != self.host_labels
        self.host_labels = labels
        if changed:
            log.info("host labels reloaded: %d label(s)", len(labels))
            for listener in self.labels_listeners:
                listener(dict(labels))
        return changed, problems

    def reload_health(self) -> None:
        if self.config.path is not None:
            self.config = load_config(self.config.path)
        self.health.load(self.config)
        log.info("health configuration reloaded")

    # -- link hooks ------------------------------------------------------

    def attach_link(self, link: LinkLike) -> None:
        self.link = link

    def add_shutdown_hook(self, hook: Callable[[str], Awaitable[None]]) -> None:
        """`hook(reason)` runs before the agent exits (e.g. tell the Cloud why)."""
        self.shutdown_hooks.append(hook)

    def add_alert_listener(self, listener: Callable[[dict[str, object]], None]) -> None:
        self.health.listeners.append(listener)

    def link_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "enabled": self.claim.enabled,
            "claimed": bool(self.claim.claimed_id),
            "claim_id": self.claim.claimed_id,
            "cloud_url": self.claim.cloud_base_url,
            "connected": False,
            "state": "not connected",
        }
        if self.link is not None:
            try:
                status.update(self.link.status())
            except Exception as exc:  # a broken link must not break the API
                status["error"] = f"link status unavailable: {exc}"
        return status

    # -- summaries for the API and the link's hello frame ----------------

    def host_info(self) -> dict[str, Any]:
        return {
            "hostname": self.hostname,
            "version": __version__,
            "machine_guid": self.machine_guid,
            **self.os_info,
        }

    @property
    def alert_count(self) -> int:
        return len(self.health.alerts)

    def stream_status(self) -> dict[str, Any] | None:
        """[stream] as this agent plays it: parent, child, both or neither."""
        parts = [p.status() for p in (self.stream_parent, self.stream_child) if p is not None]
        if not parts:
            return None
        return (
            parts[0] if len(parts) == 1 else {"role": "both", "parent": parts[0], "child": parts[1]}
        )

    def charts_summary(self) -> dict[str, Any]:
        return {
            "charts_count": len(self.store.charts),
            "dimensions_count": self.store.dimension_count(),
            "collectors": [c.name for c in self.collectors],
            "update_every": self.update_every,
            "history": self.store.size * self.update_every,
        }

    # -- running ---------------------------------------------------------

    def collect_once(self, t: int) -> None:
        began = time.perf_counter()
        for c in self.collectors:
            try:
                c.collect(t)
            except Exception as exc:
                msg = f"{exc.__class__.__name__}: {exc}"
                if self.collector_errors.get(c.name) != msg:
                    # Log once per distinct error, not every second.
                    log.error(
                        "collector %s failed: %s (retrying every %ss)",
                        c.name,
                        msg,
                        self.update_every,
                    )
                self.collector_errors[c.name] = msg
            else:
                if c.name in self.collector_errors:
                    log.info("collector %s recovered", c.name)
                    del self.collector_errors[c.name]
        self.last_cycle_ms = (time.perf_counter() - began) * 1000.0
        self.cycles += 1
        self.store.chart(
            "tether.collection_time",
            "Tether collection cycle duration",
            "ms",
            "tether",
            ("duration",),
            priority=90002,
        ).store(t, {"duration": self.last_cycle_ms})

    async def run_collectors(self) -> None:
        """Collect every `update every` seconds, aligned to the wall clock."""
        step = self.update_every
        next_health = 0.0
        while not self.stop_event.is_set():
            now = time.time()
            target = (int(now) // step + 1) * step
            try:
                await asyncio.wait_for(self.stop_event.wait(), timeout=target - now)
                return
            except TimeoutError:
                pass
            self.collect_once(target)
            for listener in self.collect_listeners:
                listener(target)
            if time.monotonic() >= next_health:
                next_health = time.monotonic() + self.health.every
                try:
                    self.health.evaluate(target)
                except Exception:
                    log.exception("health evaluation failed")

    def request_stop(self, reason: str) -> None:
        if not self.stop_event.is_set():
            self.stop_reason = reason
            log.info("stopping: %s", reason)
            self.stop_event.set()

    async def run_shutdown_hooks(self) -> None:
        for hook in list(self.shutdown_hooks):
            try:
                await asyncio.wait_for(hook(self.stop_reason), timeout=5)
            except Exception:
                log.exception("shutdown hook failed")

    @property
    def pid(self) -> int:
        return os.getpid()
