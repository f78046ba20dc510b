"""Claims through real proxies on loopback: SOCKS5 (microsocks) and HTTP CONNECT
(tinyproxy), with and without credentials, and the errors users would see."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.cloud import Cloud
from tests.fixtures.common import clean_env, command, free_port
from tests.fixtures.proxies import ProxyProcess
from tether.paths import AgentPaths

pytestmark = pytest.mark.proxy


def prepared(tmp_path: Path, cloud: Cloud, conf: str | None = None) -> AgentPaths:
    paths = AgentPaths(tmp_path)
    paths.cloud_dir.mkdir(parents=True)
    assert cloud.ca_file
    paths.cloud_fullchain_file.write_bytes(Path(cloud.ca_file).read_bytes())
    if conf is not None:
        paths.config_dir.mkdir(parents=True)
        paths.config_file.write_text(conf)
    return paths


def claim(
    cloud: Cloud, prefix: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[int, dict[str, object]]:
    proc = subprocess.run(
        [
            command("tether-claim"),
            "--prefix",
            str(prefix),
            "--json",
            "-noreload",
            f"-token={cloud.claim_token}",
            f"-url={cloud.url}",
            *args,
        ],
        capture_output=True,
        text=True,
        env=env or clean_env(),
        timeout=60,
        check=False,
    )
    assert cloud.claim_token not in proc.stdout + proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_socks5_with_and_without_credentials(
    cloud: Cloud, tmp_path: Path, socks_proxy: ProxyProcess, socks_proxy_auth: ProxyProcess
) -> None:
    prepared(tmp_path, cloud)
    for scheme in ("socks5", "socks5h"):
        code, out = claim(cloud, tmp_path, f"-proxy={socks_proxy.url(scheme)}")
        assert code == 0, out
    # The password "p@ss:w/rd%" travels percent-encoded and is decoded once.
    code, out = claim(cloud, tmp_path, f"-proxy={socks_proxy_auth.url('socks5h')}")
    assert code == 0, out
    assert "p%40ss" not in json.dumps(out) and ":***@" in str(out["proxy"])

    code, out = claim(cloud, tmp_path, f"-proxy={socks_proxy_auth.url(password='wrong')}")
    assert code == 4
    msg = str(out["message"])
    assert "SOCKS proxy" in msg and "rejected the user or password" in msg
    assert f"127.0.0.1:{socks_proxy_auth.port}" in msg and "wrong" not in msg

    code, out = claim(cloud, tmp_path, f"-proxy={socks_proxy_auth.url(auth=False)}")
    assert code == 4 and "needs a user and password" in str(out["message"])


def test_http_connect_with_and_without_credentials(
    cloud: Cloud, tmp_path: Path, http_proxy_factory: Callable[..., ProxyProcess]
) -> None:
    prepared(tmp_path, cloud)
    open_proxy = http_proxy_factory()
    code, out = claim(cloud, tmp_path, f"-proxy={open_proxy.url()}")
    assert code == 0, out
    assert f"CONNECT 127.0.0.1:{cloud.port}" in open_proxy.log_text()

    # tinyproxy accepts only alphanumeric BasicAuth passwords.
    authed = http_proxy_factory("bob", "s3cr3t", connect_ports=[cloud.port])
    code, out = claim(cloud, tmp_path, f"-proxy={authed.url()}")
    assert code == 0, out
    assert f"CONNECT 127.0.0.1:{cloud.port}" in authed.log_text()

    code, out = claim(cloud, tmp_path, f"-proxy={authed.url(password='nope')}")
    assert code == 4
    msg = str(out["message"])
    assert "proxy authentication failed" in msg and f"127.0.0.1:{authed.port}" in msg
    assert "nope" not in msg

    code, out = claim(cloud, tmp_path, f"-proxy={authed.url(auth=False)}")
    assert code == 4 and "needs a user and password" in str(out["message"])

    # A proxy that refuses CONNECT to the Cloud's port says so.
    other_port = free_port()
    narrow = http_proxy_factory(connect_ports=[other_port])
    code, out = claim(cloud, tmp_path, f"-proxy={narrow.url()}")
    assert code == 4 and f"port {cloud.port}" in str(out["message"]), out


def test_config_proxy_env_and_noproxy(
    cloud: Cloud, tmp_path: Path, http_proxy_auth: ProxyProcess
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    # [cloud] proxy in tether.conf is used by default...
    paths = prepared(tmp_path, cloud, conf=f"[cloud]\n    proxy = {http_proxy_auth.url()}\n")
    code, out = claim(cloud, tmp_path)
    assert code == 0, out
    assert f"[cloud] proxy in {paths.config_file}" in str(out["proxy"])
    # ...-proxy= wins over it...
    code, out = claim(cloud, tmp_path, f"-proxy={dead}")
    assert code == 4 and "refused" in str(out["message"]) and "the proxy" in str(out["message"])
    # ...and -noproxy wins over both.
    code, out = claim(cloud, tmp_path, f"-proxy={dead}", "-noproxy")
    assert code == 0, out

    # proxy = env follows upper-case HTTPS_PROXY, and no_proxy.
    paths.config_file.write_text("[cloud]\n    proxy = env\n")
    env = clean_env(HTTPS_PROXY=http_proxy_auth.url())
    code, out = claim(cloud, tmp_path, env=env)
    assert code == 0 and "HTTPS_PROXY" in str(out["proxy"]), out
    env = clean_env(HTTPS_PROXY=dead)
    assert claim(cloud, tmp_path, env=env)[0] == 4
    env["no_proxy"] = "127.0.0.1"
    assert claim(cloud, tmp_path, env=env)[0] == 0
