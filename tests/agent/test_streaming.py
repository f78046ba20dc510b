"""Parents and children with real agents: three children stream over TLS to a
parent, which answers the local API for each of them at /host/CHILD/...; a
killed child is the only one gone; a child restarted with a new boot id keeps
its entry; a restarted parent gets the children's past back from their rings;
a wrong API key, and a peer breaking the protocol, are refused while the
children carry on."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.agent import AgentLauncher, RunningAgent
from tests.fixtures.certs import Issued, issue
from tests.fixtures.common import free_port, poll
from tests.fixtures.streaming import KEYS, child_conf, fake_host_root, parent_conf
from tether.protocol import stream as sp

WAIT = 60.0


@dataclass
class Cluster:
    launch: AgentLauncher
    certs: Issued
    stream_port: int
    parent: RunningAgent
    children: list[RunningAgent]
    tmp: pytest.TempPathFactory

    def parent_conf(self) -> dict[str, dict[str, str]]:
        return parent_conf(self.stream_port, self.certs)

    def child_conf(self, name: str, key: str = "second-key-9876543210") -> dict[str, Any]:
        return child_conf(name, self.stream_port, self.certs, key)

    def start_child(self, name: str, prefix: Path | None = None, boot_id: str = "") -> RunningAgent:
        env = {}
        if boot_id:
            env["TETHER_HOST_ROOT"] = str(fake_host_root(self.tmp.mktemp("root"), boot_id))
        return self.launch(prefix=prefix, config=self.child_conf(name), env=env)

    def children_status(self) -> dict[str, dict[str, Any]]:
        stream = self.parent.info()["stream"] or {}
        return {c["hostname"]: c for c in stream.get("children", [])}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    launch = AgentLauncher(tmp_path_factory)
    certs = issue(tmp_path_factory.mktemp("certs"), "parent")
    c = Cluster(launch, certs, free_port(), None, [], tmp_path_factory)  # type: ignore[arg-type]
    try:
        c.parent = launch(config=c.parent_conf())
        c.children = [
            c.start_child(f"child-{i}", boot_id=f"00000000-0000-4000-8000-00000000000{i}")
            for i in range(3)
        ]
        poll(
            lambda: (
                all(s["reachable"] for s in c.children_status().values())
                and len(c.children_status()) == 3
            ),
            WAIT,
            "three children streaming to the parent",
            every=0.2,
        )
        yield c
    finally:
        launch.stop_all()


def _uptime(
    agent: RunningAgent, base: str = "", after: int = -30, waiting: bool = False
) -> dict[int, float]:
    r = agent.get(base + "/api/v1/data", chart="system.uptime", after=after)
    if waiting and r.status_code == 404:  # a just-started agent has no chart for a second
        return {}
    assert r.status_code == 200, r.text
    return {row[0]: row[1] for row in r.json()["result"]["data"] if row[1] is not None}


def _chart_dims(agent: RunningAgent, base: str) -> dict[str, list[str]]:
    charts = agent.get(base + "/api/v1/charts").json()["charts"]
    return {cid: sorted(c["dimensions"]) for cid, c in charts.items()}


def test_each_childs_data_is_queryable_through_the_parent(cluster: Cluster) -> None:
    info = cluster.parent.info()
    assert set(info["mirrored_hosts"]) == {"the-parent", "child-0", "child-1", "child-2"}
    for child in cluster.children:
        name = child.info()["hostname"]
        guid = child.info()["machine_guid"]
        via = f"/host/{name}"
        # The same values at the same seconds, as the child has them.
        common = poll(
            lambda c=child, v=via: (
                set(_uptime(c, waiting=True)) & set(_uptime(cluster.parent, v, waiting=True))
            ),
            WAIT,
            f"{name}'s uptime at the parent",
        )
        own, relayed = _uptime(child), _uptime(cluster.parent, via)
        assert all(own[t] == relayed[t] for t in common if t in own and t in relayed)
        charts = cluster.parent.get(via + "/api/v1/charts").json()["charts"]
        assert {"system.cpu", "system.ram", "system.uptime"} <= set(charts)
        # Every chart of the child, with its dimensions (charts can appear any second).
        poll(
            lambda c=child, v=via: _chart_dims(c, "") == _chart_dims(cluster.parent, v),
            WAIT,
            f"{name}'s charts at the parent",
        )
        by_guid = cluster.parent.get(f"/host/{guid}/api/v1/info").json()
        assert by_guid["hostname"] == name and by_guid["via"] == "the-parent"
        assert by_guid["reachable"] is True
        assert child.info()["stream"]["connected"] is True
    # The parent's own charts are still its own, not a child's.
    assert cluster.parent.info()["hostname"] == "the-parent"


def test_unknown_child_and_path_are_clear_404s(cluster: Cluster) -> None:
    r = cluster.parent.get("/host/nobody/api/v1/charts")
    assert r.status_code == 404 and "mirrored_hosts" in r.json()["error"]
    r = cluster.parent.get("/host/child-1/api/v1/nothing")
    assert r.status_code == 404 and "/api/v1/data" in r.json()["error"]
    r = cluster.parent.get("/host/child-1/api/v1/data", chart="no.such")
    assert r.status_code == 404 and "error" in r.json()


def test_a_wrong_api_key_is_refused(cluster: Cluster) -> None:
    intruder = cluster.launch(config=cluster.child_conf("intruder", key="guessed-key"))
    status = poll(lambda: (intruder.info()["stream"] or {}).get("last_error"), WAIT, "the refusal")
    assert "bad_api_key" in status
    assert "api key" in intruder.info()["stream"]["fix"]
    assert "intruder" not in cluster.children_status()
    assert "wrong API key" in cluster.parent.log_text()
    assert "guessed-key" not in cluster.parent.log_text()  # secrets never logged
    intruder.stop()


def test_a_child_refuses_a_parent_it_cannot_verify(cluster: Cluster) -> None:
    """A man in the middle (a certificate from another CA) gets no metrics."""
    other = issue(cluster.tmp.mktemp("other-ca"), "other")
    conf = cluster.child_conf("wary")
    conf["stream"]["ssl ca file"] = str(other.ca_file)
    wary = cluster.launch(config=conf)
    error = poll(lambda: (wary.info()["stream"] or {}).get("last_error"), WAIT, "the TLS error")
    assert "CERTIFICATE_VERIFY_FAILED" in error or "certificate verify failed" in error
    assert wary.info()["stream"]["connected"] is False
    assert "wary" not in cluster.children_status()
    wary.stop()


def _raw(cluster: Cluster) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(cluster.certs.ca_file))
    raw = socket.create_connection(("127.0.0.1", cluster.stream_port), timeout=20)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def _read_all(s: ssl.SSLSocket) -> bytes:
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return out
        out += chunk


def test_a_peer_breaking_the_protocol_is_cut_off(cluster: Cluster) -> None:
    # A frame announcing 2 GiB: closed at once, nothing allocated.
    with _raw(cluster) as s:
        s.sendall(sp.HEADER.pack(2**31) + b"\x00" * 16)
        assert _read_all(s) == b""
    # Admitted, then samples for a chart it never defined: cut off.
    with _raw(cluster) as s:
        hello = sp.Hello(api_key=KEYS.split()[0], machine_guid="evil-guid", hostname="evil")
        conn = sp.StreamConnection(sp.Role.CHILD)
        s.sendall(conn.send(hello))
        events: list[sp.Event] = []
        while not events:
            events = conn.receive_data(s.recv(65536))
        assert [type(e.frame) for e in events if isinstance(e, sp.FrameReceived)] == [sp.Welcome]
        s.sendall(sp.encode(sp.Samples(at=10, values={"system.cpu": [1.0]})))
        assert _read_all(s) == b""
    evil = poll(lambda: cluster.children_status().get("evil"), WAIT, "the evil entry")
    assert evil["reachable"] is False and "undefined chart" in evil["last_error"]
    assert all(cluster.children_status()[f"child-{i}"]["reachable"] for i in range(3))


def test_killing_a_child_marks_only_it_gone(cluster: Cluster) -> None:
    victim = cluster.children[2]
    victim.proc.kill()
    victim.proc.wait(10)
    poll(lambda: not cluster.children_status()["child-2"]["reachable"], WAIT, "child-2 gone")
    status = cluster.children_status()
    assert status["child-0"]["reachable"] and status["child-1"]["reachable"]
    assert status["child-2"]["disconnected_at"] is not None
    # Its past stays queryable at the parent.
    assert _uptime(cluster.parent, "/host/child-2")
    info = cluster.parent.get("/host/child-2/api/v1/info").json()
    assert info["reachable"] is False


def test_a_child_restarted_with_a_new_boot_id_keeps_its_identity(cluster: Cluster) -> None:
    child = cluster.children[0]
    guid = child.info()["machine_guid"]
    before = cluster.children_status()["child-0"]
    assert before["boot_id"] == "00000000-0000-4000-8000-000000000000"
    child.stop()
    poll(lambda: not cluster.children_status()["child-0"]["reachable"], WAIT, "child-0 gone")
    again = cluster.start_child("child-0", prefix=child.prefix, boot_id="ffffffff-0000-4000-8000-0")
    cluster.children[0] = again
    now = poll(
        lambda: (s := cluster.children_status()["child-0"])["reachable"] and s,
        WAIT,
        "child-0 back",
    )
    assert now["machine_guid"] == guid == again.info()["machine_guid"]
    assert now["boot_id"] == "ffffffff-0000-4000-8000-0"
    assert now["connections"] == before["connections"] + 1
    assert sum(1 for s in cluster.children_status().values() if s["hostname"] == "child-0") == 1


def test_a_restarted_parent_gets_the_childrens_past_from_their_rings(cluster: Cluster) -> None:
    child = cluster.children[1]
    first_own = min(_uptime(child, after=-600))
    cluster.parent.stop()
    cluster.parent = cluster.launch(prefix=cluster.parent.prefix, config=cluster.parent_conf())
    status = poll(
        lambda: (s := cluster.children_status().get("child-1")) and s["replayed"] > 0 and s,
        WAIT,
        "child-1 replaying to the new parent",
    )
    assert status["reachable"]
    # Seconds from before this parent process existed came from the child's ring.
    relayed = poll(
        lambda: first_own in _uptime(cluster.parent, "/host/child-1", after=-600),
        WAIT,
        "the replayed past",
    )
    assert relayed
