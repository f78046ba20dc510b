"""The room overview: composite charts across the live nodes of a room,
fanned out through the relay to 100 simulated nodes (bench/simulator.py,
the real protocol) plus two real protocol peers that miss (one silent, one
answering nonsense under a hostile hostname); drawn in a real headless
Chromium with the missed nodes named, drill-down to a node; and the
composite endpoint's access rules and bad input."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.api import new_member
from tests.fixtures.cloud import Cloud
from tests.fixtures.common import clean_env, poll
from tests.fixtures.peer import Link, Peer, link_up
from tests.fixtures.ui import sign_in

SIMULATOR = Path(__file__).resolve().parents[2] / "bench" / "simulator.py"
FLEET = 100
HOSTILE = '<img src=x onerror="window.__xss=1">'


@contextmanager
def fleet(cloud: Cloud, room_id: str, n: int) -> Iterator[subprocess.Popen[bytes]]:
    """`n` simulated nodes claimed into `room_id` and linked."""
    assert cloud.ca_file
    proc = subprocess.Popen(
        [
            *(sys.executable, str(SIMULATOR), "--url", cloud.url, "--ca", cloud.ca_file),
            *("--token", cloud.claim_token, "--rooms", room_id, "-n", str(n)),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=clean_env(),
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # ends when the simulator exits
            event = json.loads(line)
            assert event["event"] not in ("claim_failed", "bye"), event
            if event["event"] == "linked":
                assert event["n"] == n, event
                break
        yield proc
    finally:
        if proc.stdin:
            proc.stdin.close()  # end of input: the simulator exits
        proc.wait(30)


@contextmanager
def missing_peers(cloud: Cloud) -> Iterator[None]:
    """Two linked peers in the All nodes room that miss every composite: one
    never answers, one answers with text where numbers belong."""
    silent = Peer(cloud, hostname="silent-node").claim()
    liar = Peer(cloud, hostname=HOSTILE).claim()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    links: list[Link] = [
        asyncio.run_coroutine_threadsafe(link_up(p), loop).result(30) for p in (silent, liar)
    ]
    nonsense = json.dumps(
        {"result": {"labels": ["time", "user"], "data": [[1, "<b>not a number</b>"]]}}
    ).encode()
    serving = asyncio.run_coroutine_threadsafe(links[1].serve(lambda _: nonsense), loop)
    try:
        yield
    finally:
        for link in links:
            loop.call_soon_threadsafe(link.ws.transport.abort)
        with suppress(Exception):
            serving.result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.mark.browser
def test_overview_of_100_simulated_nodes_draws_with_the_missed_named(
    cloud: Cloud, open_tab: Any
) -> None:
    room = cloud.room_ids[0]  # All nodes: the fleet and both peers
    with fleet(cloud, room, FLEET), missing_peers(cloud):
        poll(
            lambda: sum(n["state"] == "live" for n in nodes(cloud)) == FLEET + 2,
            60,
            "every node live",
            every=0.5,
        )
        tab = open_tab()
        page = tab.page
        sign_in(tab, cloud)
        page.goto(f"{cloud.url}/spaces/{cloud.space_id}/rooms/{room}")
        page.click("#room-overview-link")
        page.wait_for_selector("#room-overview")
        for key in ("cpu", "load", "memory"):
            page.wait_for_selector(f"#composite-{key}[data-drawn='{FLEET}']", timeout=30_000)
            box = page.locator(f"#composite-{key}")
            assert box.get_attribute("data-missed") == "2"
            assert box.locator("canvas").count() >= 1
            assert (
                f"{FLEET} of {FLEET + 2} live nodes answered"
                in box.locator(".answered").inner_text()
            )
            missed = box.locator(".missed")
            assert missed.is_visible()
            text = missed.inner_text()
            assert "silent-node: did not answer within 2 s" in text, text
            # The hostile hostname is named as text; nothing of it became HTML.
            assert f"{HOSTILE}: sent a value that is not a finite number" in text, text
            assert missed.locator("img").count() == 0
        # Above 25 nodes: the room's band and its busiest nodes in the legend.
        drawn = json.loads(page.locator("#composite-cpu").get_attribute("data-series") or "[]")
        assert drawn[:3] == ["room minimum", "room average", "room maximum"], drawn
        assert len(drawn) == 3 + 5
        legend = page.locator("#composite-cpu .u-legend")
        assert "room average" in legend.inner_text()
        # Network and disk: the simulated nodes list no such charts, so they miss,
        # each with its reason (a partial or empty answer is still an answer).
        page.wait_for_selector("#composite-network[data-missed]", timeout=30_000)
        tab.shot("overview-100")
        assert page.evaluate("window.__xss") is None
        # Drill down: a node of the busiest list opens its node page.
        first = page.locator("#composite-cpu .top-nodes tbody a").first
        node_id = first.get_attribute("data-node-id")
        first.click()
        page.wait_for_selector(f"#node-view[data-node-id='{node_id}']")
        tab.shot("drill-down")
        assert not [e for e in tab.console_errors if "Content Security Policy" in e], (
            tab.console_errors
        )


def nodes(cloud: Cloud) -> list[dict[str, Any]]:
    r = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/nodes?per_page=500")
    assert r.status_code == 200, r.text
    return list(r.json())


def test_composite_endpoint_access_and_bad_input(cloud: Cloud) -> None:
    room = cloud.room_ids[1]
    url = f"/api/v2/rooms/{room}/composite"
    # No credentials: 401. A user who is not a member of the room's Space: 404,
    # the same answer as for a room that does not exist.
    assert cloud.api("GET", url + "?chart=cpu", token="").status_code == 401
    outsider = new_member(cloud, role="")
    r = cloud.api("GET", url + "?chart=cpu", token=outsider)
    assert r.status_code == 404 and r.json()["errorMsgKey"] == "ErrNotFound", r.text
    r = cloud.api("GET", "/api/v2/rooms/00000000-0000-4000-8000-000000000000/composite?chart=cpu")
    assert r.status_code == 404
    # Bad input: 400 with the error key and what is accepted.
    for query, says in (
        ("chart=<script>", "use one of: cpu, load, memory, network, disk"),
        ("chart=cpu&after=-10", "after must be between -86400 and -60"),
        ("chart=cpu&after=x", "is not a whole number"),
        ("chart=cpu&points=100000", "points must be between 2 and 500"),
        ("chart=cpu&deadline_ms=0", "deadline_ms must be between 100 and 10000"),
    ):
        r = cloud.api("GET", f"{url}?{query}")
        assert r.status_code == 400, (query, r.text)
        assert r.json()["errorMsgKey"] == "ErrBadRequest"
        assert says in r.json()["errorMessage"].lower(), r.text
    # An empty room answers at once, with nothing asked.
    r = cloud.api("GET", url + "?chart=load")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["asked"] == 0 and body["nodes"] == [] and body["missed"] == []


def test_equal_composites_in_flight_share_one_fan_out(cloud: Cloud) -> None:
    """Two viewers of one room at once: the node is asked once, both get it."""
    asked: list[str] = []

    def slow_answer(frame: Any) -> bytes:
        asked.append(frame.path)
        time.sleep(1.5)  # a slow node (in the peer's own thread): both requests overlap
        return json.dumps(
            {"result": {"labels": ["time", "load1"], "data": [[1_700_000_000, 0.5]]}}
        ).encode()

    peer = Peer(cloud, hostname="slow-node").claim()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    link = asyncio.run_coroutine_threadsafe(link_up(peer), loop).result(30)
    serving = asyncio.run_coroutine_threadsafe(link.serve(slow_answer), loop)
    try:
        poll(lambda: peer.state() == "live", 30, "the peer live")
        url = f"/api/v2/rooms/{cloud.room_ids[0]}/composite?chart=load&deadline_ms=5000"
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda _: cloud.api("GET", url), range(2)))
        for r in answers:
            assert r.status_code == 200, r.text
            assert r.json()["answered"] == 1 and r.json()["nodes"][0]["id"] == peer.node_id
        assert asked == ["/api/v1/data"]
        # Answered: nothing is kept, the next request asks again.
        assert cloud.api("GET", url).json()["answered"] == 1
        assert asked == ["/api/v1/data", "/api/v1/data"]
    finally:
        loop.call_soon_threadsafe(link.ws.transport.abort)
        with suppress(Exception):
            serving.result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
