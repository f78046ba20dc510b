"""Issue 12, item 5: `tether-cli doctor` and `tether-claim -doctor` name the
broken hop, with real processes: a Cloud, agents, tinyproxy, microsocks,
stunnel4 (an HTTPS proxy; an expired certificate in front of the Cloud)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.agent import AgentLauncher
from tests.fixtures.cloud import Cloud
from tests.fixtures.common import clean_env, command, free_port
from tests.fixtures.linked import Linked, link_agent, trust
from tests.fixtures.proxies import ProxyProcess
from tests.fixtures.tls_proxy import run_https_proxy, run_stunnel


def claim_doctor(prefix: Path, *flags: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [command("tether-claim"), "--prefix", str(prefix), "-doctor", "--json", *flags],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=90,
        check=False,
    )
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def cli_doctor(prefix: Path, *flags: str) -> tuple[int, dict[str, Any], str]:
    run = subprocess.run(
        [command("tether-cli"), "--prefix", str(prefix), "doctor", *flags],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=90,
        check=False,
    )
    js = subprocess.run(
        [command("tether-cli"), "--prefix", str(prefix), "doctor", "--json", *flags],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=90,
        check=False,
    )
    return js.returncode, json.loads(js.stdout), run.stdout


def hops(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["hop"]: c for c in report["checks"]}


def assert_broken_at(report: dict[str, Any], hop: str, *words: str) -> dict[str, Any]:
    assert report["ok"] is False and report["failed_hop"] == hop, report
    check = hops(report)[hop]
    assert check["result"] == "fail" and check["fix"], check
    for w in words:
        assert w in check["detail"], check
    # Every hop before passed (or was not needed); every hop after was skipped.
    order = [c["hop"] for c in report["checks"]]
    for c in report["checks"][: order.index(hop)]:
        assert c["result"] in ("ok", "skipped"), c
    assert all(c["result"] == "skipped" for c in report["checks"][order.index(hop) + 1 :])
    return check


def test_claimed_node_every_hop_passes(cloud: Cloud, start_agent: AgentLauncher) -> None:
    linked: Linked = link_agent(cloud, start_agent)
    code, report, text = cli_doctor(linked.agent.prefix)
    assert code == 0 and report["ok"] is True, report
    by = hops(report)
    assert [c["hop"] for c in report["checks"]] == [
        "dns", "tcp", "proxy", "tls", "http", "auth", "websocket"
    ]  # fmt: skip
    assert all(by[h]["result"] == "ok" for h in ("dns", "tcp", "tls", "http", "auth", "websocket"))
    assert "127.0.0.1 (IPv4)" in by["dns"]["detail"]
    assert "tether test CA" in by["tls"]["detail"] or "issued by" in by["tls"]["detail"]
    assert "version" in by["http"]["detail"]
    assert all(isinstance(c["seconds"], float) for c in report["checks"])
    assert "[ OK ] websocket" in text and "every hop checked is fine" in text
    # The doctor's upgrade closed before Hello: the agent's own link is untouched.
    linked.wait_agent_connected()
    assert linked.state() == "live"


def test_unclaimed_node_checks_up_to_http(cloud: Cloud, tmp_path: Path) -> None:
    trust(tmp_path, cloud)
    code, report = claim_doctor(tmp_path, f"-url={cloud.url}")
    assert code == 0 and report["ok"] is True, report
    by = hops(report)
    assert by["http"]["result"] == "ok"
    assert by["auth"]["result"] == "skipped" and "not claimed" in by["auth"]["detail"]


def test_wrong_dns_name(tmp_path: Path) -> None:
    code, report = claim_doctor(tmp_path, "-url=https://no-such-cloud.invalid")
    assert code == 4
    assert_broken_at(report, "dns", "no-such-cloud.invalid")


def test_closed_port(tmp_path: Path) -> None:
    port = free_port()
    code, report = claim_doctor(tmp_path, f"-url=https://127.0.0.1:{port}")
    assert code == 4
    assert_broken_at(report, "tcp", f"port {port}")


@pytest.mark.parametrize("kind", ["http", "socks5"])
def test_wrong_proxy_password(
    cloud: Cloud,
    tmp_path: Path,
    http_proxy_auth: ProxyProcess,
    socks_proxy_auth: ProxyProcess,
    kind: str,
) -> None:
    trust(tmp_path, cloud)
    proxy = http_proxy_auth if kind == "http" else socks_proxy_auth
    code, report = claim_doctor(
        tmp_path, f"-url={cloud.url}", f"-proxy={proxy.url(password='wrong')}"
    )
    assert code == 4
    check = assert_broken_at(report, "proxy", "refused the login")
    assert "user:pass@" in check["fix"] and "wrong" not in check["detail"]
    # The right password passes the same hop.
    code, report = claim_doctor(tmp_path, f"-url={cloud.url}", f"-proxy={proxy.url()}")
    assert code == 0 and hops(report)["proxy"]["result"] == "ok", report


def test_through_an_https_proxy(cloud: Cloud, tmp_path: Path) -> None:
    trust(tmp_path, cloud)
    with run_https_proxy(tmp_path / "px", "bob", "s3cr3t") as (proxy, ca):
        code, report = claim_doctor(
            tmp_path, f"-url={cloud.url}", f"-proxy={proxy.url('https')}", f"-proxy-ca={ca}"
        )
        assert code == 0, report
        assert "TLS to the proxy verified" in hops(report)["proxy"]["detail"]
        # Without the proxy's CA: the proxy hop says so.
        code, report = claim_doctor(tmp_path, f"-url={cloud.url}", f"-proxy={proxy.url('https')}")
        check = assert_broken_at(report, "proxy", "TLS to the proxy")
        assert "proxy_ca.pem" in check["fix"]


def test_untrusted_ca(cloud: Cloud, tmp_path: Path) -> None:
    code, report = claim_doctor(tmp_path, f"-url={cloud.url}")  # CA not in cloud.d
    assert code == 4
    check = assert_broken_at(report, "tls", "not trusted")
    assert "cloud_fullchain.pem" in check["fix"]


def test_expired_certificate(cloud: Cloud, tmp_path: Path) -> None:
    with run_stunnel(tmp_path / "tls", cloud.port, expired=True) as front:
        paths_dir = tmp_path / "node/var/lib/tether/cloud.d"
        paths_dir.mkdir(parents=True)
        shutil.copy(front.certs.ca_file, paths_dir / "cloud_fullchain.pem")  # trusted, but expired
        code, report = claim_doctor(tmp_path / "node", f"-url=https://127.0.0.1:{front.port}")
    assert code == 4
    check = assert_broken_at(report, "tls", "expired")
    assert "renew" in check["fix"]


def test_wrong_fingerprint(cloud: Cloud, tmp_path: Path) -> None:
    assert cloud.ca_sha256
    code, report = claim_doctor(
        tmp_path, f"-url={cloud.url}", "-ca-fingerprint=sha256:" + "ab" * 32
    )
    assert code == 4
    assert_broken_at(report, "tls", "does not match the pinned")
    # The right one: TLS verified against the pinned CA only.
    pin = cloud.ca_sha256.replace(":", "").lower()
    code, report = claim_doctor(tmp_path, f"-url={cloud.url}", f"-ca-fingerprint=sha256:{pin}")
    assert code == 0, report
    assert not (tmp_path / "var/lib/tether/cloud.d/cloud_fullchain.pem").exists()  # saves nothing


def test_removed_node(cloud: Cloud, start_agent: AgentLauncher) -> None:
    linked = link_agent(cloud, start_agent)
    r = cloud.api("DELETE", f"/api/v1/spaces/{cloud.space_id}/nodes/{linked.node_id}")
    assert r.status_code in (200, 204), r.text
    code, report, text = cli_doctor(linked.agent.prefix)
    assert code == 1
    check = assert_broken_at(report, "auth", "refused the node")
    assert "tether-claim" in check["fix"]
    assert "[FAIL] auth" in text and "fix:" in text
