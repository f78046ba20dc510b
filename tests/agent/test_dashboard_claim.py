"""Issue 12, item 3: "Connect to Cloud" on the agent's own dashboard, in a
real headless Chromium, against a real Cloud. Only the single-use key from
the 0600 file claims; it changes after every attempt; parameters outside the
strict character set are refused."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fixtures.agent import AgentLauncher, RunningAgent
from tests.fixtures.cloud import Cloud
from tests.fixtures.common import poll
from tests.fixtures.linked import trust

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
    "--no-sandbox",
    "--disable-gpu",
]


@pytest.fixture
def page() -> Iterator[Any]:
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            pg = browser.new_page()
            pg.set_default_timeout(20_000)
            yield pg
        finally:
            browser.close()


def key_of(agent: RunningAgent) -> str:
    return agent.paths.claim_key_file.read_text().strip()


def fill(page: Any, key: str, cloud: Cloud, token: str | None = None) -> None:
    page.fill("#connect-form input[name=key]", key)
    page.fill("#connect-form input[name=token]", token or cloud.claim_token)
    page.fill("#connect-form input[name=rooms]", ",".join(cloud.room_ids))
    page.fill("#connect-form input[name=url]", cloud.url)
    page.click("#connect-form button[type=submit]")


@pytest.mark.browser
def test_dashboard_form_claims_only_with_the_key_from_the_file(
    cloud: Cloud, start_agent: AgentLauncher, page: Any
) -> None:
    agent = start_agent()
    trust(agent.prefix, cloud)
    key_file = agent.paths.claim_key_file
    assert key_file.stat().st_mode & 0o777 == 0o600
    page.goto(agent.url + "/")
    page.locator("#connect").wait_for(state="visible")
    assert str(key_file) in page.locator("#key-file").inner_text()

    # A guessed key is refused, and the real key changed meanwhile.
    before = key_of(agent)
    fill(page, "0" * 32, cloud)
    page.wait_for_function("() => document.querySelector('#connect-result').className === 'bad'")
    assert "wrong key" in page.locator("#connect-result").inner_text()
    assert key_of(agent) != before
    assert agent.info()["agent-claimed"] is False

    # A key read before that attempt is spent too.
    fill(page, before, cloud)
    page.wait_for_function(
        "() => document.querySelector('#connect-result').textContent.includes('wrong key')"
    )
    assert agent.info()["agent-claimed"] is False

    # The key from the file now: claimed, and the link comes up.
    page.reload()
    page.locator("#connect").wait_for(state="visible")
    fill(page, key_of(agent), cloud)
    page.wait_for_function(
        "() => document.querySelector('#connect-result').className === 'ok'", timeout=60_000
    )
    assert "successfully claimed" in page.locator("#connect-result").inner_text()
    node_id = agent.paths.claimed_id_file.read_text().strip()
    r = poll(
        lambda: (
            (r := cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/nodes/{node_id}")).status_code
            == 200
            and r.json()["state"] == "live"
            and r
        ),
        20,
        "the node live in the Cloud",
    )
    assert set(cloud.room_ids) <= set(r.json()["rooms"])
    page.reload()
    page.wait_for_function(
        "() => document.querySelector('#status').textContent.includes('\u00b7 claimed')"
    )
    assert page.locator("#connect").is_hidden()


@pytest.mark.parametrize(
    "field,value",
    [
        ("token", "tok;rm -rf /"),
        ("rooms", "room one"),
        ("url", "http://127.0.0.1:1"),
        ("url", "https://evil.example/$(id)"),
        ("key", "../../etc/passwd"),
    ],
)
def test_api_refuses_characters_outside_the_strict_set(
    cloud: Cloud, agent: RunningAgent, field: str, value: str
) -> None:
    """The attack: parameters that would reach files or flags. Refused with
    400 even with the right key, and that key is spent."""
    key = key_of(agent)
    params = {"key": key, "token": cloud.claim_token, "rooms": cloud.room_ids[0], "url": cloud.url}
    params[field] = value
    with httpx.Client(trust_env=False, timeout=30) as c:
        r = c.post(agent.url + "/api/v3/claim", data=params)
    assert r.status_code == 400, r.text
    assert f"{field} is not valid" in r.json()["message"]
    assert key_of(agent) != key
    assert agent.info()["agent-claimed"] is False


def test_status_without_key_names_the_key_file(agent: RunningAgent) -> None:
    r = agent.get("/api/v3/claim")
    assert r.status_code == 200
    body = r.json()
    assert body["key_filename"] == str(agent.paths.claim_key_file)
    assert body["can_be_claimed"] is True and body["success"] is False


def test_get_with_a_wrong_key_is_refused_and_spends_the_key(
    cloud: Cloud, agent: RunningAgent
) -> None:
    """Netdata v2's shape: GET with query parameters."""
    key = key_of(agent)
    r = agent.get("/api/v3/claim", key="f" * 32, token=cloud.claim_token, rooms="", url=cloud.url)
    assert r.status_code == 403 and "wrong key" in r.json()["message"]
    assert key_of(agent) != key
    assert agent.info()["agent-claimed"] is False
