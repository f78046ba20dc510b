"""Accessibility and polish in a real headless Chromium: keyboard first (a
skip link, focus that shows), the Copy button beside its command and never
over it, dates in the user's locale, a favicon, dark mode from the system
setting."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures.cloud import Cloud
from tests.fixtures.ui import sign_in

pytestmark = pytest.mark.browser


def test_keyboard_copy_button_locale_favicon_and_dark_mode(cloud: Cloud, open_tab: Any) -> None:
    tab = open_tab("dark", color_scheme="dark", locale="de-DE", timezone_id="Europe/Berlin")
    page = tab.page
    sign_in(tab, cloud)
    # Dark mode follows the system setting.
    bg = page.evaluate("() => getComputedStyle(document.documentElement).backgroundColor")
    assert bg == "rgb(17, 22, 29)", bg
    # Keyboard: the first Tab reaches the skip link, which moves focus to the content.
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.className") == "skip"
    assert page.locator(".skip").is_visible()
    page.keyboard.press("Enter")
    assert page.evaluate("() => document.activeElement.id") == "main"
    # The Copy buttons: labelled, and never over their command.
    page.goto(f"{cloud.url}/spaces/{cloud.space_id}/connect")
    for box in page.locator(".copy-box").all():
        button = box.locator("button.copy").bounding_box()
        command = box.locator("pre").bounding_box()
        assert button and command
        overlaps = not (
            button["y"] + button["height"] <= command["y"]
            or command["y"] + command["height"] <= button["y"]
            or button["x"] + button["width"] <= command["x"]
            or command["x"] + command["width"] <= button["x"]
        )
        assert not overlaps, (button, command)
        assert (box.locator("button.copy").get_attribute("aria-label") or "").startswith("Copy")
    tab.shot("connect-dark")
    # Dates in the user's locale: an API token's expiry is shown German-style.
    page.goto(f"{cloud.url}/account/api-tokens")
    page.fill("#create-api-token input[name=name]", "locale check")
    page.click("#create-api-token button[type=submit]")
    expires = page.locator("td[data-label=Expires] time").first
    iso = expires.get_attribute("datetime") or ""
    shown = expires.inner_text()
    assert iso[:4] in shown and shown != iso
    expected = page.evaluate("(iso) => new Date(iso).toLocaleString('de-DE')", iso)
    assert shown == expected
    tab.shot("tokens-dark")
    # A favicon, linked from every page and at /favicon.ico, with the UI's headers.
    assert page.locator("link[rel=icon]").get_attribute("href") == "/ui/static/favicon.svg"
    r = page.request.get(f"{cloud.url}/favicon.ico")
    assert r.status == 200 and r.headers["content-type"].startswith("image/svg+xml")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert not [e for e in tab.console_errors if "Content Security Policy" in e], tab.console_errors
