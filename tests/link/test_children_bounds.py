"""Attack: a parent that announces new children frame after frame cannot
fill its Space with nodes. The Cloud keeps at most MAX_CHILDREN_PER_PARENT
children per parent, says so in its log, and still serves that parent's
children it already has. A real Cloud; the hostile parent is a scripted link
client (tests/fixtures/peer.py) speaking the documented frames."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

from tests.fixtures.cloud import Cloud
from tests.fixtures.common import poll
from tests.fixtures.peer import Peer, link_up
from tether.cloud.children import MAX_CHILDREN_PER_PARENT
from tether.protocol.frames import MAX_CHILDREN_PER_FRAME, ChildrenUpdate, ChildState


def _children(n: int) -> list[ChildState]:
    return [
        ChildState(id=g, machine_guid=g, hostname=f"c-{g[:8]}", state="live")
        for g in (str(uuid.uuid4()) for _ in range(n))
    ]


def _child_count(cloud: Cloud, parent_id: str) -> int:
    r = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/nodes")
    assert r.status_code == 200, r.text
    return sum(1 for n in r.json() if n.get("parent_id") == parent_id)


def test_a_parent_cannot_bring_more_children_than_the_limit(
    start_cloud: Callable[..., Cloud],
) -> None:
    cloud = start_cloud()
    parent = Peer(cloud, hostname="greedy-parent").claim()
    first = _children(MAX_CHILDREN_PER_FRAME)
    more = _children(50)

    async def scenario() -> None:
        link = await link_up(parent)
        await link.send(ChildrenUpdate(children=first, full=True))
        await asyncio.to_thread(
            poll,
            lambda: _child_count(cloud, parent.node_id) == MAX_CHILDREN_PER_PARENT,
            60,
            "the first children to be nodes",
        )
        # Fifty new GUIDs past the limit, and the first child still live.
        await link.send(ChildrenUpdate(children=[*more, first[0]]))
        await asyncio.to_thread(
            poll,
            lambda: "more children than the" in cloud.log_tail(400),
            30,
            "the Cloud to log the children it turned away",
        )
        await link.ws.close()

    asyncio.run(scenario())
    assert _child_count(cloud, parent.node_id) == MAX_CHILDREN_PER_PARENT
    r = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/nodes", params={"q": "c-"})
    names = {n["hostname"] for n in r.json()}
    assert not names & {c.hostname for c in more}, "a child past the limit became a node"
