"""Database outages answer JSON (issue 10, item 8).

With its PostgreSQL stopped, a Cloud used to answer plain-text 500s, drop
keep-alive connections and log a traceback per request. Now: 503
`ErrDatabaseUnavailable` with `Retry-After: 5` (HTML for the UI), one log line
when the outage starts and one when it ends, and it recovers by itself.

The test runs its own PostgreSQL (tests/fixtures/postgres.py), never the shared one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable

import httpx
import pytest

from tests.fixtures.api import claim_body
from tests.fixtures.clock import FakeClock
from tests.fixtures.cloud import Cloud
from tests.fixtures.common import poll
from tests.fixtures.peer import FAST, Peer, link_up
from tests.fixtures.postgres import Postgres
from tests.fixtures.rawhttp import RawConnection
from tether.cloud.outage import OutageLog
from tether.protocol import auth

OUTAGE_SECONDS = 6.0


def _assert_unavailable(r: httpx.Response, what: str) -> None:
    assert r.status_code == 503, f"{what}: {r.status_code} {r.text[:300]}"
    assert r.headers["content-type"] == "application/json", what
    assert r.headers["retry-after"] == "5", what
    assert r.json()["errorMsgKey"] == "ErrDatabaseUnavailable", (what, r.text)


@pytest.mark.postgres
def test_database_outage_answers_503_logs_once_and_recovers(
    own_postgres: Postgres, start_cloud: Callable[..., Cloud]
) -> None:
    cloud = start_cloud(*FAST, database_url=own_postgres.url)
    peer = Peer(cloud).claim()
    # A second token of the admin, never used before the outage: nothing about
    # it is cached, so its requests must reach the database.
    r = cloud.api("POST", "/api/v1/me/api-tokens", json={"name": "outage"})
    assert r.status_code == 201, r.text
    fresh = r.json()["token"]
    with cloud.client() as http:
        r = http.post(
            "/api/v1/auth/login",
            json={"email": cloud.admin_email, "password": cloud.admin_password},
        )
        assert r.status_code == 200, r.text
        session = dict(http.cookies)

    async def scenario() -> None:
        link = await link_up(peer)
        serving = asyncio.create_task(link.serve())
        try:
            await asyncio.to_thread(during_outage)
        finally:
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await serving
            await link.ws.close()

    def relay(token: str) -> httpx.Response:
        return cloud.api("GET", f"/api/v2/nodes/{peer.node_id}/info", token=token)

    def during_outage() -> None:
        assert relay(cloud.api_token).status_code == 200
        lines_before = len(cloud.log_file.read_text().splitlines())
        own_postgres.stop()
        requests = 0
        with cloud.client() as http:
            headers = {"Authorization": f"Bearer {fresh}"}
            # Rate-limited endpoints once each (their limits count attempts).
            node_id = str(uuid.uuid4())
            r = http.put(
                f"/api/v1/spaces/nodes/{node_id}",
                json=claim_body(node_id, cloud.claim_token, cloud.room_ids[:1]),
            )
            _assert_unavailable(r, "claim")
            _assert_unavailable(http.get(auth.challenge_path(peer.node_id)), "challenge")
            r = http.post(
                "/api/v1/auth/login",
                json={"email": cloud.admin_email, "password": cloud.admin_password},
            )
            _assert_unavailable(r, "login")
            # The API and the relay, again and again for the whole outage.
            until = time.monotonic() + OUTAGE_SECONDS
            while time.monotonic() < until:
                _assert_unavailable(http.get("/api/v1/spaces", headers=headers), "API")
                r = http.get(f"/api/v2/nodes/{peer.node_id}/info", headers=headers)
                _assert_unavailable(r, "relay")
                requests += 2
        # The UI: a page that says what is wrong.
        with cloud.client(cookies=session) as http:
            r = http.get(f"/spaces/{cloud.space_id}", headers={"Accept": "text/html"})
            assert r.status_code == 503, r.text[:300]
            assert r.headers["content-type"].startswith("text/html")
            assert r.headers["retry-after"] == "5"
            assert "cannot reach its database" in r.text
        # One keep-alive connection answers 503 after 503 and stays open.
        with RawConnection(cloud.url, cloud.ca_file) as c:
            bearer = {"Authorization": f"Bearer {fresh}"}
            for _ in range(3):
                r2 = c.request("GET", "/api/v1/me", headers=bearer)
                assert r2.status == 503 and r2.json()["errorMsgKey"] == "ErrDatabaseUnavailable"
                assert r2.headers.get("connection") != "close"

        log = cloud.log_file.read_text().splitlines()[lines_before:]
        text = "\n".join(log)
        assert requests > 20
        assert sum("database unavailable:" in line for line in log) == 1, text[-3000:]
        assert "Traceback" not in text, text[-3000:]
        assert len(log) < 10, text[-3000:]

        own_postgres.start()
        # It recovers by itself: the same calls succeed again, with no restart.
        poll(
            lambda: cloud.api("GET", "/api/v1/spaces", token=fresh).status_code == 200,
            30,
            "the API to answer again",
        )
        assert relay(fresh).status_code == 200
        log = cloud.log_file.read_text().splitlines()[lines_before:]
        assert sum("database reachable again after" in line for line in log) == 1, log

    asyncio.run(scenario())


# -- in-process: the outage bookkeeping with a fake clock ------------------------------


def test_outage_is_logged_once_and_its_end_once() -> None:
    clock = FakeClock()
    outage = OutageLog(clock)
    assert outage.reachable() is None  # no outage: nothing to say
    first = outage.failed("OperationalError: connection refused")
    assert first is not None and first.startswith(
        "database unavailable: OperationalError: connection refused"
    )
    assert outage.down
    for _ in range(650):  # every request of a 20 s outage
        clock.now += 0.03
        assert outage.failed("OperationalError: connection refused") is None
    clock.now = 1020.0
    assert outage.reachable() == "database reachable again after 20 s"
    assert not outage.down
    assert outage.reachable() is None
    clock.now += 100
    assert outage.failed("OperationalError: server closed the connection") is not None
