"""Fixtures for the UI tests: a real headless Chromium (Debian's, driven by
Playwright) and helpers to sign in, take screenshots and make members."""

from __future__ import annotations

import json
import re
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.cloud import Cloud
from tests.fixtures.invitations import join
from tether.paths import AgentPaths

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"
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


@dataclass
class Tab:
    """One browser context + page, recording what a user would not see:
    console errors (CSP violations among them) and failed page loads."""

    page: Any
    context: Any
    name: str
    console_errors: list[str]
    step: int = 0

    def shot(self, what: str) -> Path:
        """Save a screenshot under test-artifacts/ui/ (kept as a CI artifact)."""
        self.step += 1
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{self.name}-{self.step:02d}-{what}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


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


def sign_in(tab: Tab, cloud: Cloud, email: str | None = None, password: str | None = None) -> None:
    page = tab.page
    page.goto(cloud.url + "/")
    assert "/signin" in page.url
    page.fill("input[name=email]", email or cloud.admin_email)
    page.fill("input[name=password]", password or str(cloud.admin_password))
    page.click("#signin-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/spaces/.*/rooms/.*"))


def make_member(cloud: Cloud, role: str = "member") -> tuple[str, str]:
    """A new user (through the CLI, as an operator would) invited to the
    quickstart Space through the API with `role`, who accepted; returns
    (email, password)."""
    email = f"user-{secrets.token_hex(4)}@example.com"
    password = secrets.token_urlsafe(12)
    made = cloud.cli(
        "admin",
        "create-user",
        "--email",
        email,
        "--password-stdin",
        "--api-token",
        "--json",
        input=password + "\n",
    )
    assert made.returncode == 0, made.stderr
    join(cloud, email, json.loads(made.stdout)["api_token"], role)
    return email, password


def trust_cloud(prefix: Path, cloud: Cloud) -> AgentPaths:
    """What the Connect Nodes page tells users of a private-CA Cloud to do."""
    paths = AgentPaths(prefix)
    paths.cloud_dir.mkdir(parents=True, exist_ok=True)
    assert cloud.ca_file
    shutil.copy(cloud.ca_file, paths.cloud_fullchain_file)
    return paths


def session_client(cloud: Cloud, email: str, password: str) -> httpx.Client:
    """An httpx client signed in through the sign-in form, like a browser."""
    c = cloud.client(follow_redirects=False)
    r = c.get("/signin")
    token = re.search(r'name="login_csrf" value="([^"]+)"', r.text)
    assert token, r.text
    r = c.post(
        "/signin",
        data={"email": email, "password": password, "login_csrf": token.group(1), "next": "/"},
    )
    assert r.status_code == 303, r.text
    return c


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "no CSRF token in the page"
    return m.group(1)
