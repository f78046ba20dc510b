"""The critical attack of issue 10 in a real headless Chromium: a node answers
a relayed query with an HTML page whose script acts with the signed-in
victim's session (reads the claiming token, mints an API token). Through the
Cloud, that answer must never run as a page on the Cloud's origin."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.fixtures.cloud import Cloud
from tests.fixtures.common import poll
from tests.fixtures.hostile import serving
from tests.fixtures.peer import Peer
from tests.fixtures.ui import sign_in
from tether.protocol.frames import QueryRequest, QueryResponse

pytestmark = pytest.mark.browser

ATTACK = b"""<!doctype html><title>node info</title><script>
(async () => {
  document.title = "pwned: started";
  const me = await (await fetch("/api/v1/me")).json();
  const space = me.spaces[0].id;
  const claim = await (await fetch(`/api/v1/spaces/${space}/claim-token`)).json();
  const manage = await (await fetch(`/spaces/${space}/manage`)).text();
  const csrf = manage.match(/name="csrf_token" value="([^"]+)"/)[1];
  const r = await fetch("/api/v1/me/api-tokens", {
    method: "POST",
    headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
    body: JSON.stringify({name: "pwned " + claim.token.slice(0, 12)}),
  });
  document.title = "pwned: " + r.status;
})();
</script>"""


def hostile(q: QueryRequest) -> QueryResponse:
    return QueryResponse(id=q.id, status=200, content_type="text/html; charset=utf-8", body=ATTACK)


def test_a_nodes_html_answer_runs_no_script_in_the_signed_in_users_browser(
    cloud: Cloud, open_tab: Any
) -> None:
    peer = Peer(cloud, hostname="hostile").claim()
    with serving(peer, hostile):
        tab = open_tab()
        page = tab.page
        sign_in(tab, cloud)  # the victim: an admin of the node's Space
        title, url = page.title(), page.url
        # The link the attacker sends: the relay URL of the node's answer.
        download = None
        try:
            with page.expect_download(timeout=10_000) as started:
                with contextlib.suppress(PlaywrightError):  # "Download is starting"
                    page.goto(f"{cloud.url}/api/v2/nodes/{peer.node_id}/info")
            download = started.value
        except PlaywrightTimeout:  # no download: it was shown as a page
            with contextlib.suppress(AssertionError):  # let its script finish, if it runs
                poll(lambda: page.title().startswith("pwned: 2"), 10, "the script")
        tokens = cloud.api("GET", "/api/v1/me/api-tokens").json()
        minted = [t["name"] for t in tokens if t["name"].startswith("pwned")]
        assert minted == [], f"the node's script minted {minted} with the victim's session"
        assert download is not None, f"the answer was shown as a page titled {page.title()!r}"
        with open(download.path(), "rb") as f:
            assert f.read() == ATTACK  # handed over as a file, byte for byte
        assert page.url == url and page.title() == title  # the victim's page is untouched
        tab.shot("after-hostile-link")
