"""The node page in a real headless Chromium against a real Cloud and a real
agent: every chart family in a menu, a chart outside the default set opened,
24 hours (the agent's per-minute tier), zoom shared by every chart, the
node's labels (hostile ones as text) and its events pushed live."""

from __future__ import annotations

import asyncio
import json
import threading
from contextlib import suppress
from typing import Any

import pytest

from tests.fixtures.agent import AgentLauncher
from tests.fixtures.cloud import Cloud
from tests.fixtures.peer import Peer, link_up
from tests.fixtures.ui import run_shown_command, sign_in, trust_cloud

pytestmark = pytest.mark.browser

HOSTILE = '<img src=x onerror="window.__xss=1">'


def rows_of(page: Any, chart: str) -> int:
    return int(page.locator(f".chart[data-chart='{chart}']").get_attribute("data-rows") or 0)


def test_node_page_every_chart_24h_shared_zoom_labels_and_live_events(
    cloud: Cloud, start_agent: AgentLauncher, open_tab: Any
) -> None:
    agent = start_agent()
    trust_cloud(agent.prefix, cloud)
    done = run_shown_command(
        f"tether-claim -token={cloud.claim_token} -url={cloud.url}", agent.prefix
    )
    assert done.returncode == 0, done.stderr
    node_id = agent.paths.claimed_id_file.read_text().strip()
    labels = {"env": "prod", "note": HOSTILE}
    r = cloud.api(
        "PUT", f"/api/v1/spaces/{cloud.space_id}/nodes/{node_id}/labels", json={"labels": labels}
    )
    assert r.status_code == 200, r.text

    tab = open_tab()
    page = tab.page
    sign_in(tab, cloud)
    page.goto(f"{cloud.url}/spaces/{cloud.space_id}/nodes/{node_id}")
    page.wait_for_selector("#node-state.state-live", timeout=30_000)
    # The default set first, drawn through the relay.
    page.wait_for_function(
        "() => +document.querySelector(\".chart[data-chart='system.cpu']\")?.dataset.rows > 1",
        timeout=30_000,
    )
    assert (
        page.locator("#chart-menu-list button[data-family=overview]").get_attribute("aria-pressed")
        == "true"
    )
    assert page.locator(".chart[data-chart='mem.available']").count() == 0
    # Labels, as text: the hostile value is shown, no element of it exists.
    assert f"note={HOSTILE}" in page.locator("#node-labels").inner_text()
    assert page.locator("#node-labels img").count() == 0
    assert "env=prod" in page.locator("#node-labels").inner_text()
    assert "default token" in page.locator("#node-token").inner_text()
    assert "set" in page.locator("#node-key").inner_text()
    tab.shot("overview")

    # Every family the agent has is in the menu; open one outside the default
    # set (with the keyboard) and its charts are drawn.
    families = page.locator("#chart-menu-list button[data-family]").evaluate_all(
        "bs => bs.map(b => b.dataset.family)"
    )
    assert {"overview", "system", "mem", "cpu"} <= set(families), families
    page.focus("#chart-menu-list button[data-family=mem]")
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => +document.querySelector(\".chart[data-chart='mem.available']\")?.dataset.rows > 0",
        timeout=20_000,
    )
    assert "family=mem" in page.url
    assert page.locator(".chart[data-chart='system.cpu']").count() == 0
    assert page.locator("#chart-menu-list .chart-list a").count() >= 1
    tab.shot("family-mem")

    # 24 hours: the family stays, the agent answers the long range.
    page.click("a[data-range-key='24h']")
    page.wait_for_url("**range=24h**")
    assert "family=mem" in page.url
    page.wait_for_function(
        "() => +document.querySelector(\".chart[data-chart='mem.available']\")?.dataset.rows > 0",
        timeout=20_000,
    )
    assert page.locator("a[data-range-key='24h']").get_attribute("aria-current") == "true"
    tab.shot("24h")

    # Zoom: a drag across one chart sets the window of every chart; reset.
    page.click("#chart-menu-list button[data-family=overview]")
    page.wait_for_function(
        "() => +document.querySelector(\".chart[data-chart='system.load']\")?.dataset.rows > 0",
        timeout=20_000,
    )
    before = page.evaluate("() => document.querySelector('#relay-status').textContent")
    over = page.locator(".chart[data-chart='system.cpu'] .u-over").bounding_box()
    assert over is not None
    y = over["y"] + over["height"] / 2
    page.mouse.move(over["x"] + over["width"] * 0.90, y)
    page.mouse.down()
    page.mouse.move(over["x"] + over["width"] * 0.99, y, steps=5)
    page.mouse.up()
    page.wait_for_selector("#zoom-reset:not([disabled])")
    page.wait_for_function(
        "() => document.querySelector('#relay-status').textContent.startsWith('Showing')"
    )
    assert before != page.locator("#relay-status").inner_text()
    # Every chart shows the same zoomed window, not only the one dragged.
    page.wait_for_function(
        "() => { const w = [...document.querySelectorAll('.chart')].map(c => c.dataset.window);"
        " return w.length > 2 && !w[0].startsWith('live') && w.every(x => x === w[0]); }"
    )
    # Panned with the keyboard: every chart moves together.
    zoomed = page.locator(".chart[data-chart='system.load']").get_attribute("data-window")
    page.focus(".chart[data-chart='system.load']")
    page.keyboard.press("ArrowLeft")
    page.wait_for_function(
        "(z) => { const w = [...document.querySelectorAll('.chart')].map(c => c.dataset.window);"
        " return w[0] !== z && w.every(x => x === w[0]); }",
        arg=zoomed,
    )
    tab.shot("zoomed")
    page.click("#zoom-reset")
    page.wait_for_function(
        "() => document.querySelector('#relay-status').textContent.startsWith('Live')"
    )

    # Events are pushed: the agent stops, the page says so without a reload.
    page.evaluate("window.__noReload = 'still here'")
    agent.stop()
    page.wait_for_selector("#unreachable", state="visible", timeout=30_000)
    page.wait_for_function(
        "() => document.querySelector('#node-events').textContent.includes('offline')",
        timeout=10_000,
    )
    assert page.evaluate("window.__noReload") == "still here"
    assert page.evaluate("window.__xss") is None
    tab.shot("unreachable")
    assert not [e for e in tab.console_errors if "Content Security Policy" in e], tab.console_errors


def hostile_agent(frame: Any) -> bytes:
    """A node whose every name is markup: chart ids, titles, units, families,
    dimension names, alert names, transitions."""
    bad = HOSTILE
    if frame.path == "/api/v1/charts":
        chart = {
            "id": "system.evil",
            "type": f"system{bad}",
            "family": bad,
            "context": "system.evil",
            "title": f"Evil {bad}",
            "priority": 1,
            "units": bad,
            "dimensions": {"d": {"name": f"dim {bad}"}},
        }
        return json.dumps({"charts": {"system.evil": chart}}).encode()
    if frame.path == "/api/v1/data":
        rows = [[1_700_000_000 + i, float(i)] for i in range(10)][::-1]
        return json.dumps(
            {"tier": 0, "result": {"labels": ["time", f"dim {bad}"], "data": rows}}
        ).encode()
    if frame.path == "/api/v1/alarms":
        alarm = {
            "name": bad,
            "chart": bad,
            "status": "CRITICAL",
            "active": True,
            "value": 1,
            "units": bad,
        }
        transition = {
            "name": bad,
            "chart": bad,
            "when": 1_700_000_000,
            "old_status": bad,
            "status": "WARNING",
            "value": 2,
            "units": bad,
        }
        return json.dumps({"alarms": {"a": alarm}, "transitions": [transition]}).encode()
    return b"{}"


def test_node_supplied_names_are_text_on_the_node_page(cloud: Cloud, open_tab: Any) -> None:
    peer = Peer(cloud, hostname=HOSTILE).claim()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    link = asyncio.run_coroutine_threadsafe(link_up(peer), loop).result(30)
    serving = asyncio.run_coroutine_threadsafe(link.serve(hostile_agent), loop)
    try:
        tab = open_tab()
        page = tab.page
        sign_in(tab, cloud)
        page.goto(f"{cloud.url}/spaces/{cloud.space_id}/nodes/{peer.node_id}")
        # The hostile family is a menu entry, its chart drawn, all as text.
        family = page.locator("#chart-menu-list button[data-family]").nth(1)
        family.click()
        page.wait_for_function(
            "() => +document.querySelector(\".chart[data-chart='system.evil']\")?.dataset.rows > 0",
            timeout=20_000,
        )
        assert HOSTILE in page.locator(".chart[data-chart='system.evil'] h3").inner_text()
        assert HOSTILE in page.locator(".chart[data-chart='system.evil'] .u-legend").inner_text()
        page.wait_for_selector("#alerts-body td[data-label=Alert]")
        assert page.locator("#alerts-body td[data-label=Alert]").inner_text() == HOSTILE
        page.wait_for_selector("#history-body tr.from-node")
        assert HOSTILE in page.locator("#history-body tr.from-node").inner_text()
        assert page.locator("#node-view img, #node-view b").count() == 0
        assert page.evaluate("window.__xss") is None
        tab.shot("hostile-names")
        assert not [e for e in tab.console_errors if "Content Security Policy" in e], (
            tab.console_errors
        )
    finally:
        loop.call_soon_threadsafe(link.ws.transport.abort)
        with suppress(Exception):
            serving.result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
