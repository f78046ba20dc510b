"""Run packaging/docker/entrypoint.sh directly with bash against a temporary
TETHER_PREFIX, the way the container would run it (no Docker engine here)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.common import BIN_DIR, clean_env, free_port
from tether.paths import AgentPaths

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO / "packaging" / "docker" / "entrypoint.sh"
START_TIMEOUT = 30.0


def entrypoint_env(prefix: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """A clean environment: no claim variables from outside, the venv's commands first."""
    env = {k: v for k, v in clean_env().items() if not k.startswith(("TETHER_", "NETDATA_CLAIM_"))}
    env["PATH"] = f"{BIN_DIR}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    env["TETHER_PREFIX"] = str(prefix)
    env.update(extra)
    return env


def run_entrypoint(
    prefix: Path, env: Mapping[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    """The entrypoint with a command that is not an option: prepares, then execs it."""
    return subprocess.run(
        ["bash", str(ENTRYPOINT), *args],
        env=entrypoint_env(prefix, env),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@dataclass
class ContainerRun:
    """One 'container start': the entrypoint exec'ing tether-agent."""

    prefix: Path
    paths: AgentPaths
    url: str
    proc: subprocess.Popen[bytes]
    output_file: Path

    def output(self) -> str:
        return self.output_file.read_text(errors="replace")

    def log(self) -> str:
        try:
            return self.paths.error_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def info(self) -> dict[str, Any]:
        with httpx.Client(trust_env=False, timeout=5) as c:
            r = c.get(self.url + "/api/v1/info")
        r.raise_for_status()
        return dict(r.json())

    def wait_for(self, check: Any, what: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; output:\n{self.output()}")

    def stop(self, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return int(self.proc.returncode)


class ContainerStarter:
    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.tmp = tmp_path_factory
        self.started: list[ContainerRun] = []

    def __call__(self, prefix: Path, env: Mapping[str, str]) -> ContainerRun:
        paths = AgentPaths(prefix)
        paths.config_dir.mkdir(parents=True, exist_ok=True)
        if not paths.config_file.exists():
            # Loopback only: tests never listen on other interfaces.
            paths.config_file.write_text("[web]\n    bind to = 127.0.0.1\n")
        port = free_port()
        out = self.tmp.mktemp("container-output") / "output.txt"
        with open(out, "wb") as f:
            proc = subprocess.Popen(
                ["bash", str(ENTRYPOINT), "-p", str(port)],
                env=entrypoint_env(prefix, env),
                stdout=f,
                stderr=subprocess.STDOUT,
            )
        run = ContainerRun(prefix, paths, f"http://127.0.0.1:{port}", proc, out)
        self.started.append(run)
        self._wait_ready(run)
        return run

    @staticmethod
    def _wait_ready(run: ContainerRun) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        with httpx.Client(trust_env=False, timeout=2) as c:
            while time.monotonic() < deadline:
                if run.proc.poll() is not None:
                    raise AssertionError(
                        f"the agent exited with {run.proc.returncode}:\n{run.output()}"
                    )
                try:
                    c.get(run.url + "/api/v1/info")
                    return
                except httpx.TransportError:
                    time.sleep(0.1)
        run.stop()
        raise AssertionError(f"the agent did not answer in {START_TIMEOUT}s:\n{run.output()}")

    def stop_all(self) -> None:
        for run in self.started:
            run.stop()


@pytest.fixture
def start_container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContainerStarter]:
    starter = ContainerStarter(tmp_path_factory)
    yield starter
    starter.stop_all()
