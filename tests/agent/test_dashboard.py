"""The local dashboard draws live charts in a real headless Chromium."""

from __future__ import annotations

import shutil

import pytest

from tests.fixtures.agent import RunningAgent

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1"]


@pytest.mark.browser
def test_dashboard_draws_live_charts(agent: RunningAgent) -> None:
    if not shutil.which(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    requests_off_box: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            page.on(
                "request",
                lambda r: None if r.url.startswith(agent.url) else requests_off_box.append(r.url),
            )
            page.goto(agent.url + "/")
            cpu = page.locator('section[data-chart="system.cpu"]')
            cpu.wait_for(timeout=15000)
            # uPlot drew a canvas and the chart holds data points.
            page.wait_for_function(
                "() => Number(document.querySelector('[data-chart=\"system.cpu\"]')"
                ".dataset.points) >= 2",
                timeout=15000,
            )
            assert cpu.locator("canvas").count() >= 1
            first = int(cpu.get_attribute("data-last") or 0)
            # Live: the newest timestamp moves on without reloading the page.
            page.wait_for_function(
                f"() => Number(document.querySelector('[data-chart=\"system.cpu\"]')"
                f".dataset.last) > {first}",
                timeout=15000,
            )
            status = page.locator("#status").inner_text()
            assert "not claimed" in status and "cloud enabled" in status
        finally:
            browser.close()
    assert requests_off_box == []
