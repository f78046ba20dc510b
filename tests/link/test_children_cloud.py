"""Children in the Cloud through the parent's link, with real processes: a
claimed parent, three children streaming to it over TLS, one Cloud. All four
become live nodes; a child's data relayed by the Cloud comes through the
parent; a killed child is the only one offline; a child restarted with a new
boot id keeps its node; a restarted parent brings every child back without a
claim and without alerts; a parent gone for longer than the grace raises one
alert, its own, not one per child."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.fixtures.children import (
    ALL_LIVE,
    GRACE,
    RESTART_GRACE,
    WAIT,
    Setup,
    parent_with_three_children,
)
from tests.fixtures.cloud import Cloud
from tests.fixtures.common import free_port, poll
from tests.fixtures.linked import run_claim, trust
from tests.fixtures.ui import session_client
from tether.paths import AgentPaths


@pytest.fixture
def setup(
    start_cloud: Callable[..., Cloud], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    with parent_with_three_children(start_cloud, tmp_path_factory) as s:
        yield s


def _relay(s: Setup, node_id: str, path: str, **params: Any) -> Any:
    with s.cloud.client() as c:
        return c.get(
            f"/api/v2/nodes/{node_id}/{path}",
            params=params,
            headers={"Authorization": f"Bearer {s.cloud.api_token}"},
            timeout=15,
        )


def test_children_are_nodes_of_the_parents_space_reached_through_its_link(setup: Setup) -> None:
    s = setup
    nodes = s.nodes()
    parent_id = s.parent.node_id
    assert nodes["the-parent"]["id"] == parent_id and nodes["the-parent"]["parent_id"] is None
    for i in range(3):
        child = nodes[f"child-{i}"]
        assert child["parent_id"] == parent_id and child["via"] == "the-parent", child
        assert child["machine_guid"] == s.children[f"child-{i}"].info()["machine_guid"]
        # In the parent's rooms (the claim's rooms and All nodes).
        assert set(nodes["the-parent"]["rooms"]) <= set(child["rooms"]), child
        assert child["clone_of"] is None
        # No key and no link of its own: nobody can authenticate as a child.
        with s.cloud.client() as c:
            r = c.get(f"/api/v1/auth/node/{child['id']}/challenge")
        assert r.status_code == 404 and r.json()["errorMsgKey"] == "ErrNodeNotFound", r.text
    # The Nodes view and the node page say "via the-parent".
    c = session_client(s.cloud, s.cloud.admin_email, s.cloud.admin_password)
    try:
        page = c.get(f"/spaces/{s.cloud.space_id}/nodes/{nodes['child-1']['id']}")
        assert page.status_code == 200, page.text
        assert "via the-parent" in page.text
        room = s.cloud.room_ids[0] if s.cloud.room_ids else nodes["child-1"]["rooms"][0]
        listing = c.get(f"/spaces/{s.cloud.space_id}/rooms/{room}/nodes.json")
        assert listing.status_code == 200, listing.text
        rows = {n["hostname"]: n for n in listing.json()["nodes"]}
        assert rows["child-1"]["via"] == "the-parent" and rows["the-parent"]["via"] == ""
    finally:
        c.close()

    # A child's chart data through the Cloud's relay: answered by the parent.
    child_id = nodes["child-1"]["id"]
    info = _relay(s, child_id, "info")
    assert info.status_code == 200, info.text
    assert info.json()["hostname"] == "child-1" and info.json()["via"] == "the-parent"
    r = poll(
        lambda: (
            (x := _relay(s, child_id, "data", chart="system.uptime", after=-10)).status_code == 200
            and x
        ),
        WAIT,
        "child-1's uptime through the Cloud",
        0.3,
    )
    relayed = {row[0]: row[1] for row in r.json()["result"]["data"] if row[1] is not None}
    own = s.children["child-1"].get("/api/v1/data", chart="system.uptime", after=-30).json()
    own_rows = {row[0]: row[1] for row in own["result"]["data"] if row[1] is not None}
    common = set(relayed) & set(own_rows)
    assert common and all(relayed[t] == own_rows[t] for t in common)
    queries = s.parent.aclk()["queries_answered"]
    assert queries >= 2  # the parent's link answered them

    # The room overview's composite asks each child through its parent too.
    room = nodes["child-1"]["rooms"][0]

    def drawn() -> set[str]:
        r = s.cloud.api(
            "GET", f"/api/v2/rooms/{room}/composite", params={"chart": "cpu", "after": -60}
        )
        assert r.status_code == 200, r.text
        return {n["hostname"] for n in r.json()["nodes"] if any(v is not None for v in n["values"])}

    poll(lambda: set(ALL_LIVE) <= drawn(), WAIT, "every child drawn in the composite", 0.5)

    # Killing a child makes only it offline.
    s.children["child-2"].proc.kill()
    took = s.wait_states(
        {"child-2": "offline", "child-0": "live", "child-1": "live", "the-parent": "live"},
        "child-2 offline, the rest live",
    )
    print(f"a killed child offline in the Cloud after {took:.2f} s")
    assert s.states() == {**ALL_LIVE, "child-2": "offline"}
    # The parent still holds its past: the relay answers, saying it is not streaming.
    gone = _relay(s, nodes["child-2"]["id"], "info")
    assert gone.status_code == 200 and gone.json()["reachable"] is False, gone.text

    # Restarted with a new boot id: the same node.
    s.children["child-2"].proc.wait(5)
    s.start_child("child-2", "00000000-0000-4000-8000-0000000000aa", s.children["child-2"].prefix)
    s.wait_states(ALL_LIVE, "child-2 back")
    again = s.nodes()
    assert again["child-2"]["id"] == nodes["child-2"]["id"]
    assert again["child-2"]["boot_id"] == "00000000-0000-4000-8000-0000000000aa"
    assert len(again) == 4


def test_a_parent_restart_brings_its_children_back_without_alerts(setup: Setup) -> None:
    s = setup
    before = {k: v["id"] for k, v in s.nodes().items()}
    s.set_grace(RESTART_GRACE)  # a restart well within it, however slow this machine
    parent = s.parent.agent
    parent.stop()
    s.wait_states({k: "offline" for k in ALL_LIVE}, "the parent and its children offline")
    states = s.nodes()
    assert all("the-parent" in states[f"child-{i}"]["state_cause"] for i in range(3))
    began = time.monotonic()
    s.parent.agent = s.launch(prefix=parent.prefix, config=s.parent_conf())
    took = s.wait_states(ALL_LIVE, "all four back after the parent's restart")
    print(f"all four live {time.monotonic() - began:.2f} s after the parent restarted")
    assert {k: v["id"] for k, v in s.nodes().items()} == before  # no new nodes, no claim
    assert s.alerts() == [], "no alert while the parent came back within the grace"
    assert set(s.raised_ever().values()) == {0}, s.raised_ever()

    s.set_grace(GRACE)

    # Gone longer than the grace: one alert, the parent's.
    s.parent.agent.proc.kill()
    s.wait_states({k: "offline" for k in ALL_LIVE}, "the killed parent and its children offline")
    alerts = poll(lambda: s.alerts(), WAIT, "the parent's reachability alert", 0.2)
    time.sleep(GRACE * 2)  # wait for real processes: any per-child alert is due by now
    alerts = s.alerts()
    print(f"alerts after the parent was gone {GRACE * 2:g} s past its grace: {len(alerts)}")
    assert [a["node"]["id"] for a in alerts] == [s.parent.node_id], alerts
    assert s.raised_ever() == {"the-parent": 1, "child-0": 0, "child-1": 0, "child-2": 0}
    del took


def test_a_cloned_child_is_kept_and_flagged_and_a_moved_child_keeps_its_node(
    setup: Setup,
) -> None:
    s = setup
    original = s.children["child-0"]
    guid = original.info()["machine_guid"]
    # A copy of child-0's machine (its GUID file) under another hostname.
    copy_prefix = s.tmp.mktemp("clone")
    copy_guid = AgentPaths.from_prefix(copy_prefix).machine_guid_file
    copy_guid.parent.mkdir(parents=True)
    copy_guid.write_text(guid + "\n")
    s.start_child("copy-of-0", "00000000-0000-4000-8000-0000000000cc", copy_prefix)
    s.wait_states({**ALL_LIVE, "copy-of-0": "live"}, "the clone live next to child-0")
    nodes = s.nodes()
    assert nodes["copy-of-0"]["machine_guid"] == nodes["child-0"]["machine_guid"] == guid
    assert nodes["copy-of-0"]["id"] != nodes["child-0"]["id"]
    assert nodes["copy-of-0"]["clone_of"] == nodes["child-0"]["id"], nodes["copy-of-0"]
    assert nodes["child-0"]["clone_of"] is None
    r = s.cloud.api("GET", f"/api/v1/spaces/{s.cloud.space_id}/nodes/{nodes['copy-of-0']['id']}")
    clone_events = [e for e in r.json()["events"] if e["kind"] == "clone"]
    assert clone_events and "both are kept" in clone_events[0]["cause"], r.json()["events"]
    # Each one's data through the Cloud is its own.
    for name in ("child-0", "copy-of-0"):
        info = _relay(s, nodes[name]["id"], "info")
        assert info.status_code == 200 and info.json()["hostname"] == name, info.text

    # child-1 moves to a second claimed parent: the same node, the new parent.
    port2 = free_port()
    conf2 = s.parent_conf()
    conf2["global"]["hostname"] = "parent-two"
    conf2["stream"]["bind"] = f"127.0.0.1:{port2}"
    second = s.launch(config=conf2)
    trust(second.prefix, s.cloud)
    claim = run_claim(second.prefix, s.cloud)
    assert claim.returncode == 0, claim.stdout + claim.stderr
    second_id = second.paths.claimed_id_file.read_text().strip()
    moving = s.children["child-1"]
    moving.stop()
    s.stream_port, first_port = port2, s.stream_port
    s.start_child("child-1", "00000000-0000-4000-8000-0000000000dd", moving.prefix)
    s.stream_port = first_port
    poll(
        lambda: (n := s.nodes()["child-1"])["parent_id"] == second_id and n["state"] == "live",
        WAIT,
        "child-1 live via parent-two",
        0.1,
    )
    moved = s.nodes()["child-1"]
    assert moved["id"] == nodes["child-1"]["id"] and moved["via"] == "parent-two"
    info = _relay(s, moved["id"], "info")
    assert info.status_code == 200 and info.json()["via"] == "parent-two", info.text
    # The first parent's late word about it changes nothing.
    assert s.nodes()["child-1"]["parent_id"] == second_id
