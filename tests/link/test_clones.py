"""Clones without flapping (issue 13, item 6), against the real Cloud:

- protocol peers: a second host (another machine-id) with a live identity is
  refused with 4010 and the live link stays; the same host (same machine-id,
  new boot id) still replaces at once; an admin's takeover lets the refused
  host in once;
- real agents on two simulated hosts (TETHER_HOST_ROOT with their own
  etc/machine-id and boot_id) sharing one cloud.d: exactly one link, a
  visible conflict with both hosts, the copy stopped with the fix, and no
  replacement; after an admin's takeover exactly one replacement.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed

from tests.fixtures.agent import AgentLauncher, RunningAgent
from tests.fixtures.cloud import Cloud
from tests.fixtures.common import poll
from tests.fixtures.host_root import build_host_root
from tests.fixtures.linked import Linked, cloud_args, link_agent, run_claim, trust
from tests.fixtures.peer import FAST, Peer, link_up, open_ws
from tests.fixtures.ui import csrf_of, session_client
from tether.protocol.frames import encode


def _conflict_url(cloud: Cloud, node_id: str) -> str:
    return f"/api/v1/spaces/{cloud.space_id}/nodes/{node_id}/clone-conflict"


def _replacements(node: dict[str, Any]) -> int:
    """Links of this node that replaced a live one (its recent events)."""
    return sum(
        1
        for e in node["events"]
        if e["kind"] == "state" and (e["cause"] or "").startswith("replaced")
    )


def test_a_second_host_is_refused_and_the_live_link_stays(
    start_cloud: Callable[..., Cloud],
) -> None:
    cloud = start_cloud(*FAST)
    peer = Peer(cloud, hostname="original").claim()
    clone = Peer(cloud, node_id=peer.node_id, hostname="copy")  # another machine-id
    clone.private_pem, clone.public_pem = peer.private_pem, peer.public_pem
    restarted = Peer(cloud, node_id=peer.node_id, machine_id=peer.machine_id)
    restarted.private_pem, restarted.public_pem = peer.private_pem, peer.public_pem

    async def scenario() -> None:
        first = await link_up(peer)
        serving = asyncio.create_task(first.serve())
        # The copy gets no HelloAck: it is closed with 4010 instead.
        code, reason = await _refused(clone)
        assert code == 4010, (code, reason)
        assert "copy of original" in (reason or "")
        node = await asyncio.to_thread(peer.node)
        assert node["state"] == "live" and node["session_id"] == first.ack.session_id
        assert node["hostname"] == "original" and node["machine_id"] == peer.machine_id
        conflict = node["clone_conflict"]
        assert conflict["current"]["machine_id"] == peer.machine_id
        assert conflict["newcomer"]["machine_id"] == clone.machine_id
        assert conflict["newcomer"]["hostname"] == "copy" and conflict["refused"] == 1
        assert [e["kind"] for e in node["events"]].count("clone_refused") == 1
        assert _replacements(node) == 0
        assert not serving.done()  # the live link was never touched
        # The same host after a restart replaces at once (4009 to the old link).
        second = await link_up(restarted)
        with contextlib.suppress(ConnectionClosed):
            await asyncio.wait_for(serving, 10)  # ends when the Cloud closes the link
        assert first.ws.close_code == 4009
        serving = asyncio.create_task(second.serve())  # alive: no probe lets the copy in
        node = await asyncio.to_thread(peer.node)
        assert node["session_id"] == second.ack.session_id and _replacements(node) == 1
        # An admin lets the copy take over: its next link replaces, once.
        r = await asyncio.to_thread(
            cloud.api, "POST", _conflict_url(cloud, peer.node_id), json={"action": "takeover"}
        )
        assert r.status_code == 201, r.text
        assert r.json()["conflict"]["decision"] == "takeover"
        third = await link_up(clone)
        with contextlib.suppress(ConnectionClosed):
            await asyncio.wait_for(serving, 10)
        assert second.ws.close_code == 4009
        node = await asyncio.to_thread(peer.node)
        assert node["session_id"] == third.ack.session_id and node["machine_id"] == clone.machine_id
        assert node["clone_conflict"] is None and _replacements(node) == 2
        assert "clone_takeover" in [e["kind"] for e in node["events"]]
        await third.ws.close()

    asyncio.run(scenario())
    assert "CLONE refused" in cloud.log_file.read_text()


def test_resolving_needs_an_admin_a_conflict_and_a_known_action(
    start_cloud: Callable[..., Cloud],
) -> None:
    cloud = start_cloud(*FAST)
    peer = Peer(cloud).claim()
    url = _conflict_url(cloud, peer.node_id)
    r = cloud.api("POST", url, json={"action": "keep"})
    assert r.status_code == 409 and r.json()["errorMsgKey"] == "ErrNoConflict"
    r = cloud.api("POST", url, json={"action": "explode"})
    assert r.status_code in (400, 409), r.text
    r = cloud.api("POST", url, json=["keep"])
    assert r.status_code == 400 and r.json()["errorMsgKey"] == "ErrBadRequest"
    r = cloud.api("POST", url, token="", json={"action": "keep"})
    assert r.status_code == 401


def _host(tmp: Path, name: str) -> Path:
    root = build_host_root(tmp / name)
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
    (root / "proc/sys/kernel/random/boot_id").write_text(str(uuid.uuid4()) + "\n")
    return root


def _copy_identity(src: RunningAgent, dst: Path) -> None:
    """What cloning a VM does to cloud.d: the same id, key and settings."""
    target = dst / "var/lib/tether/cloud.d"
    shutil.copytree(src.paths.cloud_dir, target, dirs_exist_ok=True)


def _aclk(agent: RunningAgent) -> dict[str, Any]:
    proc = agent.cli("aclk-state", "json")
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def test_two_agents_on_two_hosts_with_one_identity_leave_one_link_and_a_conflict(
    start_cloud: Callable[..., Cloud],
    start_agent: AgentLauncher,
    tmp_path: Path,
) -> None:
    cloud = start_cloud(*cloud_args())
    host_a, host_b = _host(tmp_path, "a"), _host(tmp_path, "b")
    original = start_agent(env={"TETHER_HOST_ROOT": str(host_a)})
    trust(original.prefix, cloud)
    proc = run_claim(original.prefix, cloud)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    node_id = original.paths.claimed_id_file.read_text().strip()
    linked = Linked(cloud, original, node_id)
    linked.wait_state("live", 20)
    session = linked.node()["session_id"]

    copy_prefix = tmp_path / "copy"
    _copy_identity(original, copy_prefix)
    copy = start_agent(prefix=copy_prefix, env={"TETHER_HOST_ROOT": str(host_b)})
    poll(lambda: _aclk(copy)["terminal"], 30, "the copy stops retrying")
    state = _aclk(copy)
    assert "4010" in state["last_error"]
    assert f"this machine is a copy of {node_id}" in state["fix"]
    assert "-id=$(uuidgen)" in state["fix"]
    node = linked.node()
    assert node["state"] == "live" and node["session_id"] == session  # one link, untouched
    assert _aclk(original)["connected"] is True
    conflict = node["clone_conflict"]
    mid_a = (host_a / "etc/machine-id").read_text().strip()
    mid_b = (host_b / "etc/machine-id").read_text().strip()
    assert conflict["current"]["machine_id"] == mid_a
    assert conflict["newcomer"]["machine_id"] == mid_b
    assert _replacements(node) == 0
    # The node page shows both hosts and, to the admin, the two buttons.
    page = _node_page(cloud, node_id)
    assert 'id="clone-conflict"' in page and mid_a[:12] in page and mid_b[:12] in page
    assert 'value="takeover"' in page and 'value="keep"' in page
    assert "copy of" in copy.log_text()

    # The admin lets the copy take over; it links when told to reload: the
    # original is replaced once, comes back, is refused and stops.
    r = cloud.api("POST", _conflict_url(cloud, node_id), json={"action": "takeover"})
    assert r.status_code == 201, r.text
    assert copy.cli("reload-claiming-state").returncode == 0
    poll(lambda: linked.node()["machine_id"] == mid_b, 30, "the copy took over")
    poll(lambda: _aclk(original)["terminal"], 60, "the original stops retrying")
    node = linked.node()
    assert node["state"] == "live" and node["clone_conflict"]["newcomer"]["machine_id"] == mid_a
    assert _replacements(node) == 1
    poll(lambda: _aclk(copy)["connected"], 10, "the copy to say connected")


def _node_page(cloud: Cloud, node_id: str) -> str:
    c = session_client(cloud, cloud.admin_email, cloud.admin_password)
    try:
        page = c.get(f"/spaces/{cloud.space_id}/nodes/{node_id}")
        assert page.status_code == 200, page.text
        return page.text
    finally:
        c.close()


async def _refused(clone: Peer) -> tuple[int | None, str | None]:
    """Link as `clone`; the close code and reason the Cloud answers with."""
    reply = await asyncio.to_thread(clone.authenticate)
    ws = await open_ws(clone.cloud, reply.link_token, reply.link_url)
    await ws.send(encode(clone.hello()))
    await ws.wait_closed()
    return ws.close_code, ws.close_reason


def _keep_via_page(cloud: Cloud, node_id: str) -> None:
    """Press "Keep the current host" on the node page, as a signed-in admin."""
    page_url = f"/spaces/{cloud.space_id}/nodes/{node_id}"
    c = session_client(cloud, cloud.admin_email, cloud.admin_password)
    try:
        page = c.get(page_url).text
        assert 'id="clone-conflict"' in page
        r = c.post(
            page_url + "/clone-conflict", data={"csrf_token": csrf_of(page), "action": "keep"}
        )
        assert r.status_code == 303, r.text
        assert 'id="clone-conflict"' not in c.get(page_url).text
    finally:
        c.close()


def test_keep_on_the_node_page_clears_the_notice_and_the_copy_stays_refused(
    start_cloud: Callable[..., Cloud],
) -> None:
    cloud = start_cloud(*FAST)
    peer = Peer(cloud, hostname="original").claim()
    clone = Peer(cloud, node_id=peer.node_id, hostname="copy")
    clone.private_pem, clone.public_pem = peer.private_pem, peer.public_pem

    async def scenario() -> None:
        first = await link_up(peer)
        serving = asyncio.create_task(first.serve())
        assert (await _refused(clone))[0] == 4010
        await asyncio.to_thread(_keep_via_page, cloud, peer.node_id)
        node = await asyncio.to_thread(peer.node)
        assert node["clone_conflict"] is None and node["session_id"] == first.ack.session_id
        assert "clone_resolved" in [e["kind"] for e in node["events"]]
        # Kept: the copy is still refused (and noticed again), the link stays.
        assert (await _refused(clone))[0] == 4010
        node = await asyncio.to_thread(peer.node)
        assert node["clone_conflict"]["refused"] == 1
        assert node["session_id"] == first.ack.session_id and not serving.done()
        serving.cancel()
        await first.ws.close()

    asyncio.run(scenario())


def test_a_linked_agent_is_unaffected_by_the_clone_checks(
    start_cloud: Callable[..., Cloud], start_agent: AgentLauncher
) -> None:
    """A plain agent restart (same host: same machine-id) still links at once."""
    linked = link_agent(start_cloud(*cloud_args()), start_agent)
    assert linked.node()["clone_conflict"] is None
    linked.agent.stop()
    again = start_agent(prefix=linked.agent.prefix)
    linked.agent = again
    linked.wait_state("live", 30)
    assert linked.node()["clone_conflict"] is None


def test_a_dead_link_of_the_old_host_does_not_keep_a_moved_identity_out(
    start_cloud: Callable[..., Cloud],
) -> None:
    """The live link does not answer (its host died, the keepalive has not
    run out yet): another host with the identity replaces it instead of
    being refused."""
    cloud = start_cloud(*FAST)
    peer = Peer(cloud, hostname="old-host").claim()
    moved = Peer(cloud, node_id=peer.node_id, hostname="new-host")
    moved.private_pem, moved.public_pem = peer.private_pem, peer.public_pem

    async def scenario() -> None:
        first = await link_up(peer)  # answers pings, never a query: a wedged agent
        second = await link_up(moved)
        code, _ = await first.closed()
        assert code == 4009
        node = await asyncio.to_thread(peer.node)
        assert node["session_id"] == second.ack.session_id
        assert node["machine_id"] == moved.machine_id and node["clone_conflict"] is None
        await second.ws.close()

    asyncio.run(scenario())
    assert "did not answer within" in cloud.log_file.read_text()
