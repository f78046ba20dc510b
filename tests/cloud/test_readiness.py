"""`/api/ready`, what a load balancer health-checks: yes only while this Cloud
process can serve. The test runs its own PostgreSQL and NATS and stops each."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.fixtures.cloud import Cloud
from tests.fixtures.common import poll
from tests.fixtures.nats_server import NatsServer
from tests.fixtures.peer import FAST
from tests.fixtures.postgres import Postgres
from tether.cloud.app import create_app
from tether.cloud.settings import CloudSettings


def _ready(cloud: Cloud) -> httpx.Response:
    with cloud.client() as http:  # no credentials: a balancer has none
        return http.get("/api/ready")


def _not_ready_because(cloud: Cloud, reason: str) -> Callable[[], Any]:
    def check() -> bool:
        r = _ready(cloud)
        return (
            r.status_code == 503
            and r.json()["errorMsgKey"] == "ErrNotReady"
            and reason in r.json()["errorMessage"]
            and r.headers["retry-after"] == "2"
        )

    return check


@pytest.mark.postgres
def test_not_ready_while_nats_or_the_database_is_gone(
    own_postgres: Postgres, own_nats: NatsServer, start_cloud: Callable[..., Cloud]
) -> None:
    cloud = start_cloud(*FAST, "--nats-url", own_nats.url, database_url=own_postgres.url)
    r = _ready(cloud)
    assert r.status_code == 200 and r.json()["status"] == "ready", r.text
    assert r.json()["process_id"]
    # /api/health only says the process answers: it stays 200 throughout.
    own_nats.stop()
    poll(_not_ready_because(cloud, "NATS is unavailable"), 20, "not ready without NATS")
    assert cloud.api("GET", "/api/health", token="").status_code == 200
    own_nats.start()
    poll(lambda: _ready(cloud).status_code == 200, 20, "ready once NATS is back")
    own_postgres.stop()
    poll(_not_ready_because(cloud, "database is unavailable"), 30, "not ready without PostgreSQL")
    own_postgres.start()
    poll(lambda: _ready(cloud).status_code == 200, 30, "ready once PostgreSQL is back")


def test_not_ready_before_start_and_while_draining(tmp_path: Any) -> None:
    app = create_app(CloudSettings(data_dir=tmp_path, insecure_http=True))

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cloud") as c:
            # The lifespan has not run: the link service is not up.
            r = await c.get("/api/ready")
            assert r.status_code == 503 and "starting" in r.json()["errorMessage"]
            async with app.router.lifespan_context(app):
                assert (await c.get("/api/ready")).status_code == 200
                await app.state.links.stop()  # what SIGTERM does first
                r = await c.get("/api/ready")
                assert r.status_code == 503 and "draining" in r.json()["errorMessage"], r.text

    asyncio.run(scenario())
