"""Planned stops (issue 13, item 4), with a real Cloud and real agents:
`tether-cli shutdown-agent --reason upgrade --back-in 10m` is shown as
"planned: upgrade, expected back at HH:MM" and raises no reachability alert
before that time plus grace, while an unplanned stop of a second agent does;
a Goodbye reason from a newer agent is taken as `other`."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any

import msgspec

from tests.fixtures.agent import AgentLauncher
from tests.fixtures.cloud import Cloud
from tests.fixtures.common import poll
from tests.fixtures.linked import cloud_args, link_agent
from tests.fixtures.peer import FAST, Peer, link_up
from tests.fixtures.ui import session_client
from tether.protocol.frames import PROTOCOL_VERSION


def _at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def _active_alerts(cloud: Cloud) -> list[dict[str, Any]]:
    r = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/alerts")
    assert r.status_code == 200, r.text
    return list(r.json())


def test_a_planned_stop_shows_its_reason_and_return_and_is_not_overdue_before_it(
    start_cloud: Callable[..., Cloud], start_agent: AgentLauncher
) -> None:
    cloud = start_cloud(*cloud_args(), "--alert-grace-seconds", "1")
    planned = link_agent(cloud, start_agent)
    unplanned = link_agent(cloud, start_agent)

    # A reason the agent does not know is refused, and the agent keeps running.
    bad = unplanned.agent.cli("shutdown-agent", "--reason", "vacation")
    assert bad.returncode == 1 and "not shutting down" in bad.stdout
    bad = unplanned.agent.cli("shutdown-agent", "--back-in", "soon")
    assert bad.returncode == 1 and "duration" in bad.stdout
    assert unplanned.agent.proc.poll() is None

    proc = planned.agent.cli("shutdown-agent", "--reason", "upgrade", "--back-in", "10m")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "planned stop: upgrade, expected back in 600 s" in proc.stdout
    planned.agent.proc.wait(20)
    assert unplanned.agent.cli("shutdown-agent").returncode == 0
    unplanned.agent.proc.wait(20)

    # The unplanned one is due a grace (1 s) after it left: its alert comes ...
    poll(
        lambda: any(a["node"]["id"] == unplanned.node_id for a in _active_alerts(cloud)),
        30,
        "the unplanned stop's alert",
    )
    # ... while the planned one, gone at the same moment, is not overdue.
    assert not any(a["node"]["id"] == planned.node_id for a in _active_alerts(cloud))
    node = planned.node()
    assert node["state"] == "offline"
    stop = node["planned"]
    assert stop["reason"] == "upgrade"
    back = _at(stop["expected_back_at"])
    assert abs((back - _at(node["state_since"])).total_seconds() - 600) < 2
    assert stop["text"].startswith(f"planned: upgrade, expected back at {back:%H:%M} UTC")
    assert "goodbye: agent upgrade" in node["state_cause"]
    assert unplanned.node()["planned"]["reason"] == "shutdown"
    assert unplanned.node()["planned"]["expected_back_at"] is None

    # The Nodes list (its Expected back column) and the node page say so too.
    c = session_client(cloud, cloud.admin_email, cloud.admin_password)
    try:
        room = cloud.room_ids[0]
        listing = c.get(f"/spaces/{cloud.space_id}/rooms/{room}/nodes.json").json()
        row = next(n for n in listing["nodes"] if n["id"] == planned.node_id)
        assert row["planned"] == stop["text"] and _at(row["expected_back_at"]) == back
        html = c.get(f"/spaces/{cloud.space_id}/rooms/{room}").text
        assert stop["text"] in html
        page = c.get(f"/spaces/{cloud.space_id}/nodes/{planned.node_id}").text
        assert 'id="planned"' in page and stop["text"] in page
    finally:
        c.close()

    # Back: the plan is forgotten.
    planned.agent = start_agent(prefix=planned.agent.prefix)
    planned.wait_state("live", 30)
    assert planned.node()["planned"] is None


def test_an_unknown_goodbye_reason_from_a_newer_agent_is_accepted_as_other(
    start_cloud: Callable[..., Cloud],
) -> None:
    cloud = start_cloud(*FAST)
    peer = Peer(cloud).claim()

    async def scenario() -> None:
        link = await link_up(peer)
        raw = {"t": "goodbye", "v": PROTOCOL_VERSION, "reason": "hibernate"}
        await link.ws.send(msgspec.msgpack.encode({**raw, "expected_back_seconds": 120}))
        code, _ = await link.closed()
        assert code == 1000  # a normal goodbye, not 4000

    asyncio.run(scenario())
    node = poll(lambda: (n := peer.node())["state"] == "offline" and n, 10, "offline")
    assert node["planned"]["reason"] == "other"
    assert node["planned"]["text"].startswith("planned: other, expected back at")
    assert "goodbye: agent other, expected back in 120 s" == node["state_cause"]
