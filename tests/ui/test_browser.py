"""The UI in a real headless Chromium against a real Cloud and a real agent."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.fixtures.agent import AgentLauncher
from tests.fixtures.cloud import Cloud
from tests.fixtures.containers import linux_command
from tests.fixtures.ui import make_member, run_shown_command, sign_in, trust_cloud

pytestmark = pytest.mark.browser


def connect_from_ui(tab: Any, cloud: Cloud, room_name: str) -> tuple[str, str]:
    """Sign in, create a room, open Connect Nodes from the empty room; returns
    (room page URL, the shown tether-claim command)."""
    page = tab.page
    sign_in(tab, cloud)
    empty = page.locator("#empty-room")
    assert empty.is_visible()
    tab.shot("empty-all-nodes")
    page.fill("#create-room input[name=name]", room_name)
    page.click("#create-room button[type=submit]")
    page.wait_for_selector(f"h1:has-text('{room_name}')")
    room_url = page.url
    # The empty room offers both choices of the reference.
    assert page.locator("#choice-connect").is_visible()
    assert page.locator("#choice-add").is_visible()
    tab.shot("empty-room")
    page.click("#choice-connect")
    page.wait_for_selector("#instructions")
    room_id = room_url.rsplit("/", 1)[1]
    assert page.locator(f"input[name=room][value='{room_id}']").is_checked()
    assert page.locator("#ca-fingerprint").inner_text() == cloud.ca_sha256
    linux = page.locator("#step-1").inner_text()
    # Exactly the command the container tests paste into a fresh Debian node
    # (tests/packaging/test_container_kickstart.py, through linux_command).
    assert linux == linux_command(cloud.url, cloud.claim_token, [room_id], cloud.ca_sha256)
    assert linux.startswith(f"curl -fsS -k -o /tmp/tether-ca.pem {cloud.url}/ca.pem && ")
    assert f"--claim-ca-fingerprint {cloud.ca_sha256}" in linux
    assert f"--claim-rooms {room_id}" in linux and f"--claim-url {cloud.url}" in linux
    # This Cloud is on 127.0.0.1: the page says the command works on this machine only.
    assert "only works on this machine" in page.locator("#address-warning-1").inner_text()
    tab.shot("connect-linux")
    # Switching the environment redraws the command (the form submits itself).
    page.check("input[name=env][value=docker-run]")
    page.wait_for_selector("#instructions[data-environment=docker-run]")
    assert "-e TETHER_CLAIM_TOKEN=" in page.locator("#instructions").inner_text()
    tab.shot("connect-docker")
    page.check("input[name=env][value=linux]")
    page.wait_for_selector("#instructions[data-environment=linux]")
    shown = page.locator("#claim-direct").inner_text()
    assert shown == (
        f"tether-claim -token={cloud.claim_token} -rooms={room_id} -url={cloud.url} "
        f"-ca-fingerprint=sha256:{cloud.ca_sha256}"
    )
    return room_url, shown


def test_claim_with_the_shown_command_and_node_appears_without_reload(
    cloud: Cloud, start_agent: AgentLauncher, open_tab: Any
) -> None:
    tab = open_tab()
    page = tab.page
    room_url, shown = connect_from_ui(tab, cloud, "Web servers")
    agent = start_agent()
    trust_cloud(agent.prefix, cloud)

    page.goto(room_url)
    page.wait_for_selector("#empty-room", state="visible")
    page.evaluate("window.__noReload = 'still here'")
    done = run_shown_command(shown, agent.prefix)
    assert done.returncode == 0, done.stderr
    assert "Agent was successfully claimed." in done.stdout

    node_id = agent.paths.claimed_id_file.read_text().strip()
    row = page.wait_for_selector(f"tr[data-node-id='{node_id}']", timeout=10_000)
    assert page.evaluate("window.__noReload") == "still here"  # no reload happened
    assert page.locator("#empty-room").is_hidden()
    text = row.inner_text()
    listed = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/nodes/{node_id}").json()
    assert listed["hostname"] in text
    # The sidebar's room counts follow too.
    room_id = room_url.rsplit("/", 1)[1]
    assert page.locator(f".rooms li[data-room-id='{room_id}'] .count").inner_text() == "1"
    assert "Web servers" in text
    assert re.search(r"(live|unseen) since \d+ (s|min) ago", text), text
    tab.shot("node-appeared")
    # Its link comes up by itself: the row turns live, still without a reload.
    page.wait_for_selector(f"tr[data-node-id='{node_id}'][data-state=live]", timeout=30_000)
    assert page.evaluate("window.__noReload") == "still here"
    assert "live" in page.locator(f"tr[data-node-id='{node_id}'] .state").inner_text()
    tab.shot("node-live")
    assert not [e for e in tab.console_errors if "Content Security Policy" in e], tab.console_errors


def test_node_goes_live_and_its_page_draws_charts_through_the_relay(
    cloud: Cloud, start_agent: AgentLauncher, open_tab: Any
) -> None:
    tab = open_tab()
    page = tab.page
    sign_in(tab, cloud)
    agent = start_agent()
    trust_cloud(agent.prefix, cloud)
    room_id = cloud.room_ids[1]
    page.goto(f"{cloud.url}/spaces/{cloud.space_id}/rooms/{room_id}")
    page.evaluate("window.__noReload = 'still here'")
    done = run_shown_command(
        f"tether-claim -token={cloud.claim_token} -rooms={room_id} -url={cloud.url}", agent.prefix
    )
    assert done.returncode == 0, done.stderr
    node_id = agent.paths.claimed_id_file.read_text().strip()
    page.wait_for_selector(f"tr[data-node-id='{node_id}'][data-state=live]", timeout=30_000)
    assert page.evaluate("window.__noReload") == "still here"
    tab.shot("node-live")

    page.click(f"tr[data-node-id='{node_id}'] a")
    page.wait_for_selector("#node-view")
    # Charts come through the relay: a canvas is drawn and the relay answered rows.
    page.wait_for_function(
        "() => [...document.querySelectorAll('.chart')].some(c => +c.dataset.rows > 1)",
        timeout=20_000,
    )
    first = page.locator(".chart[data-chart='system.cpu']")
    assert first.locator("canvas").count() == 1
    assert int(first.get_attribute("data-rows") or 0) > 1
    page.wait_for_selector("#alerts-body tr td[data-label=Alert]", timeout=10_000)
    tab.shot("node-charts")
    page.click("a[data-range-key='1h']")
    page.wait_for_function(
        "() => +document.querySelector(\".chart[data-chart='system.cpu']\")?.dataset.rows > 0"
    )
    tab.shot("node-charts-1h")

    # The node stops: the page says so without a reload, with the cause.
    agent.stop()
    page.wait_for_selector("#unreachable", state="visible", timeout=30_000)
    assert "unreachable" in page.locator("#node-state").inner_text()
    tab.shot("node-unreachable")
    assert not [e for e in tab.console_errors if "Content Security Policy" in e], tab.console_errors


def test_member_sees_no_token_and_cannot_open_connect_nodes(cloud: Cloud, open_tab: Any) -> None:
    email, password = make_member(cloud)
    tab = open_tab("member")
    page = tab.page
    sign_in(tab, cloud, email, password)
    assert page.locator("#connect-nodes-link").count() == 0
    assert page.locator("#choice-connect").count() == 0
    assert "Only Space admins" in page.locator("#empty-room").inner_text()
    tab.shot("member-room")
    response = page.goto(f"{cloud.url}/spaces/{cloud.space_id}/connect")
    assert response is not None and response.status == 403
    html = page.content()
    assert cloud.claim_token not in html
    assert "tct_" not in html
    assert "Only a Space admin" in page.locator("#error-message").inner_text()
    tab.shot("member-connect-403")
    page.goto(f"{cloud.url}/spaces/{cloud.space_id}/manage")
    assert page.locator("#claiming-token").count() == 0
    assert "tct_" not in page.content()


def test_manage_space_rotate_token_with_confirmation(cloud: Cloud, open_tab: Any) -> None:
    tab = open_tab()
    page = tab.page
    sign_in(tab, cloud)
    page.click("text=Manage Space")
    page.wait_for_selector("#claiming-token")
    prefix = cloud.claim_token.split("_")[1]
    assert f"tct_{prefix}_" in page.locator("#claiming-token").inner_text()
    page.click("#rotate-token summary")
    # Submitting without ticking the confirmation does nothing (required box).
    page.click("#rotate-token button[type=submit]")
    assert "/manage" in page.url and "done=" not in page.url
    page.check("#rotate-token input[name=confirm]")
    tab.shot("rotate-confirm")
    page.click("#rotate-token button[type=submit]")
    page.wait_for_url(re.compile(r".*done=token-rotated"))
    assert "Claiming token rotated" in page.locator(".flash").inner_text()
    assert f"tct_{prefix}_" not in page.locator("#claiming-token").inner_text()
    tab.shot("rotated")
    # The old token is refused at once.
    r = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/claim-token")
    assert r.json()["token"] != cloud.claim_token


def test_narrow_screen_and_security_headers(cloud: Cloud, open_tab: Any) -> None:
    tab = open_tab("narrow", viewport={"width": 375, "height": 740}, is_mobile=True)
    page = tab.page
    response = page.goto(cloud.url + "/signin")
    assert response is not None
    headers = response.headers
    assert "default-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    sign_in(tab, cloud)
    for path in ("", "/connect", "/manage"):
        page.goto(f"{cloud.url}/spaces/{cloud.space_id}{path}")
        overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"{path or 'room'} is wider than a phone screen by {overflow}px"
        tab.shot("narrow" + (path.replace("/", "-") or "-room"))
    assert not [e for e in tab.console_errors if "Content Security Policy" in e], tab.console_errors
