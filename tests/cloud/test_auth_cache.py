"""The Cloud caches who a credential is and which nodes a user may see (for
speed: every relayed query is authenticated). These tests check, against the
real Cloud process with a real linked peer answering, that the cache never
outlives a change made through this Cloud: a removed member, a revoked token,
an ended session and a removed node lose access on the very next request, and
a wrong token is never taken for a valid one."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx

from tests.fixtures.api import new_member
from tests.fixtures.cloud import Cloud
from tests.fixtures.peer import FAST, Peer, link_up


def aclient(cloud: Cloud, token: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(
        base_url=cloud.url,
        verify=cloud.ssl_context(),
        trust_env=False,
        timeout=20,
        headers=headers,
    )


@asynccontextmanager
async def served_node(cloud: Cloud) -> AsyncIterator[str]:
    """A claimed peer, linked and answering every query; yields its node id."""
    peer = Peer(cloud).claim()
    link = await link_up(peer)
    server = asyncio.create_task(link.serve())
    try:
        yield peer.node_id
    finally:
        server.cancel()
        await link.ws.close()


async def relay_status(c: httpx.AsyncClient, node_id: str, **kw: object) -> int:
    r = await c.get(f"/api/v2/nodes/{node_id}/info", **kw)  # type: ignore[arg-type]
    return r.status_code


def test_removed_member_and_removed_node_lose_access_at_once(
    start_cloud: Callable[..., Cloud],
) -> None:
    cloud = start_cloud(*FAST)
    member = new_member(cloud)

    async def scenario() -> None:
        async with (
            served_node(cloud) as node_id,
            aclient(cloud, cloud.api_token) as admin,
            aclient(cloud, member) as c,
        ):
            me = (await c.get("/api/v1/me")).json()
            # Several reads fill the cache; all succeed.
            for _ in range(5):
                assert await relay_status(c, node_id) == 200
            members = f"/api/v1/spaces/{cloud.space_id}/members"
            r = await admin.delete(f"{members}/{me['id']}")
            assert r.status_code == 204, r.text
            # The very next request, well within the cache lifetime, is refused.
            r = await c.get(f"/api/v2/nodes/{node_id}/info")
            assert r.status_code == 404 and r.json()["errorMsgKey"] == "ErrNotFound", r.text
            # Invited back and accepted: access returns at once too (a refusal is not cached).
            r = await admin.post(members, json={"email": me["email"], "role": "member"})
            assert r.status_code == 201, r.text
            r = await c.post(f"/api/v1/invitations/{r.json()['id']}/accept")
            assert r.status_code == 200, r.text
            assert await relay_status(c, node_id) == 200

            # A removed node is 404 at once for everyone, not a stale 200 or 503.
            assert await relay_status(admin, node_id) == 200
            r = await admin.delete(f"/api/v1/spaces/{cloud.space_id}/nodes/{node_id}")
            assert r.status_code == 204, r.text
            for client in (admin, c):
                r = await client.get(f"/api/v2/nodes/{node_id}/info")
                assert r.status_code == 404 and r.json()["errorMsgKey"] == "ErrNotFound", r.text

    asyncio.run(scenario())


def test_revoked_token_is_refused_at_once_and_wrong_tokens_never_pass(
    start_cloud: Callable[..., Cloud],
) -> None:
    cloud = start_cloud(*FAST)

    async def scenario() -> None:
        async with served_node(cloud) as node_id, aclient(cloud, cloud.api_token) as admin:
            made = (await admin.post("/api/v1/me/api-tokens", json={"name": "script"})).json()
            token, prefix = made["token"], made["prefix"]
            async with aclient(cloud, token) as c:
                assert await relay_status(c, node_id) == 200
                assert (await c.get("/api/v1/me")).status_code == 200

                # Same public prefix, wrong secret: refused, every time, even
                # right after the real token was cached.
                kind, pfx, secret = token.split("_", 2)
                forged = f"{kind}_{pfx}_{'A' * len(secret)}"
                for _ in range(3):
                    status = await relay_status(
                        c, node_id, headers={"Authorization": f"Bearer {forged}"}
                    )
                    assert status == 401
                r = await c.get("/api/v1/me", headers={"Authorization": f"Bearer {token}x"})
                assert r.status_code == 401 and r.json()["errorMsgKey"] == "ErrUnauthorized"
                assert await relay_status(c, node_id) == 200  # the real one still works

                # last_used_at is recorded, but not rewritten on every request.
                listed = {t["prefix"]: t for t in (await c.get("/api/v1/me/api-tokens")).json()}
                first_use = listed[prefix]["last_used_at"]
                assert first_use is not None and listed[prefix]["revoked"] is False
                for _ in range(3):
                    assert await relay_status(c, node_id) == 200
                listed = {t["prefix"]: t for t in (await c.get("/api/v1/me/api-tokens")).json()}
                assert listed[prefix]["last_used_at"] == first_use

                # Revoked through the API: refused on the very next request.
                r = await admin.delete(f"/api/v1/me/api-tokens/{prefix}")
                assert r.status_code == 204, r.text
                r = await c.get(f"/api/v2/nodes/{node_id}/info")
                assert r.status_code == 401 and "revoked" in r.json()["errorMessage"], r.text
                assert (await c.get("/api/v1/me")).status_code == 401
                r = await admin.delete(f"/api/v1/me/api-tokens/{uuid.uuid4().hex[:8]}")
                assert r.status_code == 404 and "api-tokens" in r.json()["errorMessage"]
            # The admin's own token is unaffected.
            assert await relay_status(admin, node_id) == 200

    asyncio.run(scenario())


def test_logged_out_session_is_refused_at_once(start_cloud: Callable[..., Cloud]) -> None:
    cloud = start_cloud(*FAST)

    async def scenario() -> None:
        async with served_node(cloud) as node_id:
            async with aclient(cloud) as browser:
                r = await browser.post(
                    "/api/v1/auth/login",
                    json={"email": cloud.admin_email, "password": cloud.admin_password},
                )
                assert r.status_code == 200, r.text
                csrf = r.json()["csrf_token"]
                cookie = dict(browser.cookies)
                assert await relay_status(browser, node_id) == 200
                r = await browser.post("/api/v1/auth/logout", headers={"X-CSRF-Token": csrf})
                assert r.status_code == 204, r.text
            # The old cookie, replayed right away, no longer signs anyone in.
            async with aclient(cloud) as replay:
                replay.cookies.update(cookie)
                r = await replay.get(f"/api/v2/nodes/{node_id}/info")
                assert r.status_code == 401, r.text

    asyncio.run(scenario())
