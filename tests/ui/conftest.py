"""Fixtures for the UI tests: a real headless Chromium (Debian's, driven by
Playwright). The helpers to sign in and make members are in tests/fixtures/ui.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.ui import Tab

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    # Without this Chromium sends DNS queries for Google hosts even headless.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def open_tab(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    contexts: list[Any] = []
    test_name = re.sub(r"[^A-Za-z0-9_-]+", "_", request.node.name)

    def make(label: str = "", **context_args: Any) -> Tab:
        # The Cloud's private CA is checked in test_ui_http.py without a browser.
        ctx = browser.new_context(ignore_https_errors=True, **context_args)
        contexts.append(ctx)
        page = ctx.new_page()
        page.set_default_timeout(15_000)
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        return Tab(page, ctx, test_name + (f"-{label}" if label else ""), errors)

    yield make
    for ctx in contexts:
        ctx.close()
