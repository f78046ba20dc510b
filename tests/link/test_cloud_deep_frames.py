"""A node that sends a frame nesting values thousands of levels deep (found by
tests/fuzz/test_parsers.py): the Cloud closes that link as a protocol error
(4000, with the reason) instead of failing inside the decoder with a
traceback, and its other links are untouched."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tests.fixtures.cloud import Cloud
from tests.fixtures.peer import FAST, Peer, link_up

DEEP = b"\x83\xa1t\xabnode_update\xa1v\x01\xa1z" + b"\x91" * 100_000 + b"\xc0"


def test_a_deeply_nested_frame_closes_that_link_as_a_protocol_error(
    start_cloud: Callable[..., Cloud],
) -> None:
    cloud = start_cloud(*FAST)
    hostile, good = Peer(cloud).claim(), Peer(cloud, hostname="good").claim()

    async def main() -> None:
        bad_link, good_link = await link_up(hostile), await link_up(good)
        await bad_link.ws.send(DEEP)
        code, reason = await bad_link.closed(10)
        assert (code, reason) == (4000, "malformed frame: values nest too deep")
        assert good.state() == "live"
        await good_link.ws.close()

    asyncio.run(main())
    assert "Traceback" not in cloud.log_tail(400)
