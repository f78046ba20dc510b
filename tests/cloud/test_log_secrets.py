"""Secrets stay out of logs: the quickstart's output, and a Cloud logging at
debug level with the access log on while it is used with every credential."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.fixtures.cloud import Cloud
from tests.fixtures.common import clean_env, command, free_port, poll
from tests.fixtures.peer import Link, Peer, open_ws
from tether.protocol.frames import HelloAck, QueryRequest, decode, encode

METRIC = "48151.623"  # a metric value a node sends through the relay


def quickstart(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [command("tether-cloud"), "quickstart", "--no-serve", "--data-dir", str(data),
         "--port", str(free_port()), *args],
        capture_output=True, text=True, timeout=60, env=clean_env(),
    )  # fmt: skip


def test_quickstart_prints_secrets_once_and_keeps_one_api_token(tmp_path: Path) -> None:
    data = tmp_path / "d"
    first = quickstart(data, "--json")
    assert first.returncode == 0, first.stderr
    info = json.loads(first.stdout)
    assert info["admin_password"] and info["api_token"] and info["claim_token"]
    # With --json the secrets are only in the JSON; stderr (a log) gets none.
    for secret in (info["admin_password"], info["api_token"], info["claim_token"]):
        assert secret not in first.stderr
    assert "tether-claim -token=CLAIM_TOKEN" in first.stderr
    token_file = Path(info["api_token_file"])
    assert token_file.read_text().strip() == info["api_token"]
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600

    again = quickstart(data, "--json")
    info2 = json.loads(again.stdout)
    assert info2["admin_password"] is None  # printed on the first run only
    assert info2["api_token"] == info["api_token"]  # reused: no second valid token
    human = quickstart(data)  # without --json: the human text, on stdout
    assert info["admin_password"] not in human.stdout
    assert info["api_token"] not in human.stdout  # not new: where it is, not what
    assert str(token_file) in human.stdout

    # The token file lost: a new token, and the old one is revoked.
    token_file.unlink()
    third = json.loads(quickstart(data, "--json").stdout)
    assert third["api_token"] != info["api_token"]
    with sqlite3.connect(data / "cloud.db") as db:
        rows = db.execute("SELECT revoked FROM api_tokens WHERE name = 'quickstart'")
        assert sorted(bool(r) for (r,) in rows) == [False, True]  # one valid token


def test_debug_log_holds_no_credential(start_cloud: Callable[..., Cloud]) -> None:
    cloud = start_cloud("-v", "--access-log", "--keepalive", "1")
    assert cloud.admin_password
    proxy_password = "pr0xy-Pa55word"
    secrets = [cloud.api_token, cloud.claim_token, cloud.admin_password, proxy_password, METRIC]
    peer = Peer(cloud).claim()

    async def scenario() -> None:
        reply = await asyncio.to_thread(peer.authenticate)
        secrets.append(reply.link_token)
        ws = await open_ws(cloud, reply.link_token, reply.link_url)
        await ws.send(encode(peer.hello()))
        ack = decode(await asyncio.wait_for(ws.recv(decode=False), 10))
        assert isinstance(ack, HelloAck), ack
        link = Link(peer, ws, ack)

        def answer(_q: QueryRequest) -> bytes:
            return json.dumps({"result": {"data": [[1, float(METRIC)]]}}).encode()

        serving = asyncio.create_task(link.serve(answer))
        try:
            await asyncio.to_thread(use_every_credential, cloud, peer.node_id, proxy_password,
                                    secrets)  # fmt: skip
        finally:
            serving.cancel()
            await ws.close()

    asyncio.run(scenario())
    # The lines are there (debug on, every request logged), the secrets are not.
    poll(lambda: "/api/v2/nodes/" in cloud.log_file.read_text(), 10, "the access log lines")
    log = cloud.log_file.read_text()
    assert " DEBUG " in log and "GET /api/v1/spaces/" in log and "/aclk" in log
    leaked = [s for s in secrets if s in log]
    assert not leaked, f"secrets in the log: {leaked}\n{cloud.log_tail(80)}"


def use_every_credential(
    cloud: Cloud, node_id: str, proxy_password: str, secrets: list[str]
) -> None:
    """API token, session cookie and CSRF token, a relayed query, a proxy URL
    with a password in a query string."""
    assert cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/nodes").status_code == 200
    r = cloud.api("GET", f"/api/v2/nodes/{node_id}/data?chart=system.cpu")
    assert r.status_code == 200 and METRIC in r.text, r.text
    with cloud.client() as c:
        r = c.post(
            "/api/v1/auth/login",
            json={"email": cloud.admin_email, "password": cloud.admin_password},
        )
        assert r.status_code == 200, r.text
        csrf = r.json()["csrf_token"]
        secrets.extend([csrf, c.cookies["tether_session"]])
        assert c.get("/api/v1/me").status_code == 200
        r = c.post("/api/v1/spaces", json={"name": "Logged"}, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 201
        proxy = f"socks5h://bob:{proxy_password}@proxy.lan:1080"
        assert (
            c.get(f"/spaces/{cloud.space_id}/connect", params={"proxy": proxy}).status_code == 200
        )
        r = c.get(f"/spaces/{cloud.space_id}/connect?proxy={proxy}")
        assert r.status_code == 200
    with httpx.Client(verify=cloud.ssl_context(), trust_env=False) as c:  # a bad one too
        bad = cloud.api_token[:-4] + "AAAA"
        secrets.append(bad)
        r = c.get(f"{cloud.url}/api/v1/me", headers={"Authorization": f"Bearer {bad}"})
        assert r.status_code == 401
