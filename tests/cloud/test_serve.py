"""Starting the Cloud: TLS by default, the CA kept across restarts, quickstart
idempotent, clean stop, plain HTTP only when asked."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import stat
import subprocess
import time

import httpx
import pytest

from tests.fixtures.api import claim, nodes
from tests.fixtures.cloud import Cloud
from tests.fixtures.common import clean_env, command, free_port


def test_tls_ca_persists_and_quickstart_is_idempotent(start_cloud) -> None:  # type: ignore[no-untyped-def]
    first: Cloud = start_cloud()
    assert first.url.startswith("https://")
    for name in ("ca-key.pem", "server-key.pem", "secret.key"):
        assert stat.S_IMODE((first.data_dir / name).stat().st_mode) == 0o600, name
    # The server certificate verifies against the CA for 127.0.0.1 and localhost.
    for host in ("127.0.0.1", "localhost"):
        with httpx.Client(verify=first.ssl_context(), trust_env=False) as c:
            assert c.get(f"https://{host}:{first.port}/api/health").status_code == 200
    # Without the CA the system store refuses it: verification is on.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{first.url}/api/health", trust_env=False)
    assert claim(first).status_code == 204
    assert first.stop() == 0  # SIGTERM is a clean stop

    again: Cloud = start_cloud(data_dir=first.data_dir, database_url=first.database_url)
    assert again.ca_sha256 == first.ca_sha256
    assert (again.space_id, again.room_ids) == (first.space_id, first.room_ids)
    assert again.claim_token == first.claim_token
    assert again.admin_password is None  # not reprinted, not reset
    assert again.api_token == first.api_token  # kept in quickstart-api-token, not re-minted
    # The human text goes to stderr after the JSON line: give it a moment.
    deadline = time.monotonic() + 10
    while "set-password" not in again.log_file.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "set-password" in again.log_file.read_text()
    assert len(nodes(again)) == 1
    assert nodes(again, token=first.api_token)  # the API token still works
    assert again.stop(signal.SIGINT) == 0


def test_plain_http_only_when_asked(start_cloud, tmp_path) -> None:  # type: ignore[no-untyped-def]
    tls: Cloud = start_cloud()
    # Plain HTTP to the TLS port gets no answer.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{tls.port}/api/health", trust_env=False, timeout=5)
    plain: Cloud = start_cloud("--insecure-http")
    assert plain.url.startswith("http://") and plain.ca_file is None
    assert plain.api("GET", f"/api/v1/spaces/{plain.space_id}/nodes").status_code == 200
    assert "plain HTTP" in plain.log_file.read_text()


def test_listens_on_ipv6_too(cloud: Cloud) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    ctx = ssl.create_default_context(cafile=cloud.ca_file)
    with httpx.Client(verify=ctx, trust_env=False) as c:
        r = c.get(f"https://[::1]:{cloud.port}/api/health")
    assert r.status_code == 200


def test_no_serve_prepares_only_and_cli(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "d"
    base = [command("tether-cloud")]
    r = subprocess.run(
        [
            *base,
            "quickstart",
            "--no-serve",
            "--json",
            "--data-dir",
            str(data),
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    for k in ("url", "ca_file", "ca_sha256", "space_id", "room_ids", "claim_token", "api_token"):
        assert info[k], k
    assert "tether-claim -token=" in r.stderr
    assert f"-ca-fingerprint=sha256:{info['ca_sha256']}" in r.stderr
    dd = ["--data-dir", str(data)]
    show = subprocess.run(
        [*base, "token", "show", "--space", info["space_id"], *dd],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert show.stdout.strip() == info["claim_token"]
    rot = subprocess.run(
        [*base, "token", "rotate", "--space", info["space_id"], *dd],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert rot.returncode == 0 and rot.stdout.strip() != info["claim_token"]
    pw = subprocess.run(
        [*base, "admin", "set-password", "--email", "admin@localhost", "--password-stdin", *dd],
        input="correct horse battery\n",
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert pw.returncode == 0, pw.stderr
    bad = subprocess.run(
        [*base, "admin", "set-password", "--email", "nobody@x", *dd],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert bad.returncode == 1 and "no user with email nobody@x" in bad.stderr
    usage = subprocess.run(
        [*base, "serve", "--bogus"], capture_output=True, text=True, timeout=60, env=clean_env()
    )
    assert usage.returncode == 2


def test_port_in_use_is_a_clear_error(cloud: Cloud, tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = subprocess.run(
        [
            command("tether-cloud"),
            "serve",
            "--data-dir",
            str(tmp_path / "x"),
            "--port",
            str(cloud.port),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert r.returncode == 1
    assert f"port {cloud.port}" in r.stderr
