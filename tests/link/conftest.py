"""Helpers for the link's end-to-end tests: a real Cloud, real agents, real proxies.

`Linked` ties one running agent to one Cloud: it trusts the Cloud's CA
(`cloud.d/cloud_fullchain.pem`), claims with the real `tether-claim`, and reads
the node back through the Cloud's API. Timing assertions are generous bounds;
the measured figures are printed (run pytest with `-s` to see them).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.agent import AgentLauncher, RunningAgent
from tests.fixtures.cloud import Cloud
from tests.fixtures.common import clean_env, command, poll, stop_process
from tests.fixtures.proxies import ProxyProcess
from tether.net.proxy import mask_url

# A small keepalive so "offline within 1.5 keepalive intervals" is quick to test.
KEEPALIVE = 2.0


def cloud_args() -> tuple[str, ...]:
    return ("--keepalive", f"{KEEPALIVE:g}")


def trust(prefix: Path, cloud: Cloud) -> None:
    cloud_dir = prefix / "var/lib/tether/cloud.d"
    cloud_dir.mkdir(parents=True, exist_ok=True)
    assert cloud.ca_file
    shutil.copy(cloud.ca_file, cloud_dir / "cloud_fullchain.pem")


def run_claim(prefix: Path, cloud: Cloud, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            command("tether-claim"),
            "--prefix",
            str(prefix),
            f"-token={cloud.claim_token}",
            f"-rooms={','.join(cloud.room_ids)}",
            f"-url={cloud.url}",
            *extra,
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )


@dataclass
class Linked:
    cloud: Cloud
    agent: RunningAgent
    node_id: str

    def node(self) -> dict[str, Any]:
        r = self.cloud.api("GET", f"/api/v1/spaces/{self.cloud.space_id}/nodes/{self.node_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def state(self) -> str | None:
        r = self.cloud.api("GET", f"/api/v1/spaces/{self.cloud.space_id}/nodes/{self.node_id}")
        return str(r.json()["state"]) if r.status_code == 200 else None

    def wait_state(self, state: str, timeout: float) -> float:
        """Seconds until the Cloud's API shows the node in `state`."""
        began = time.monotonic()
        poll(lambda: self.state() == state, timeout, f"node {self.node_id} {state}")
        return time.monotonic() - began

    def aclk(self) -> dict[str, Any]:
        proc = self.agent.cli("aclk-state", "json")
        assert proc.returncode == 0, proc.stderr
        return dict(json.loads(proc.stdout))

    def relay(self, path: str, timeout: float = 15, **params: Any) -> Any:
        with self.cloud.client() as c:
            return c.get(
                f"/api/v2/nodes/{self.node_id}/{path}",
                params=params,
                headers={"Authorization": f"Bearer {self.cloud.api_token}"},
                timeout=timeout,
            )


def link_agent(
    cloud: Cloud,
    start_agent: AgentLauncher,
    proxy: str | None = None,
    live_timeout: float = 10,
) -> Linked:
    """Start an agent, claim it into `cloud` and wait until the node is live."""
    config = {"cloud": {"proxy": proxy}} if proxy else None
    agent = start_agent(config=config)
    trust(agent.prefix, cloud)
    began = time.monotonic()
    proc = run_claim(agent.prefix, cloud)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    node_id = agent.paths.claimed_id_file.read_text().strip()
    linked = Linked(cloud, agent, node_id)
    claimed = time.monotonic()
    linked.wait_state("live", live_timeout)
    print(
        f"claim took {claimed - began:.3f} s; live {time.monotonic() - claimed:.3f} s after "
        f"the claim returned (proxy: {mask_url(proxy) if proxy else 'none'})"
    )
    return linked


@pytest.fixture
def linked(start_cloud: Callable[..., Cloud], start_agent: AgentLauncher) -> Linked:
    return link_agent(start_cloud(*cloud_args()), start_agent)


class Restartable:
    """A proxy the test can SIGKILL and start again on the same port."""

    def __init__(self, proxy: ProxyProcess) -> None:
        self.proxy = proxy
        self.argv = [str(a) for a in proxy.proc.args]  # type: ignore[union-attr]
        self.extra: list[subprocess.Popen[bytes]] = []

    def kill(self) -> None:
        proc = self.extra[-1] if self.extra else self.proxy.proc
        proc.kill()
        proc.wait(5)

    def start(self) -> None:
        proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.extra.append(proc)
        poll(self._listening, 10, "the proxy to listen again")

    def _listening(self) -> bool:
        import socket

        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.proxy.port)) == 0

    def close(self) -> None:
        for proc in self.extra:
            stop_process(proc)


@pytest.fixture
def restartable() -> Iterator[Callable[[ProxyProcess], Restartable]]:
    made: list[Restartable] = []

    def make(proxy: ProxyProcess) -> Restartable:
        r = Restartable(proxy)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()
