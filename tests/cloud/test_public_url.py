"""The Cloud's address is right everywhere: `--public-url` and `--san` go into
the server certificate (re-issued from the same CA when they change), the
commands the quickstart and Connect Nodes show, and the link URL; they are
kept for later starts; a loopback URL is warned about. Real Clouds, real TLS,
the real tether-claim."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import signal
import socket
import ssl
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.fixtures.agent import AgentLauncher
from tests.fixtures.cloud import Cloud
from tests.fixtures.common import clean_env, command, free_port, poll
from tests.fixtures.peer import Peer
from tests.fixtures.ui import session_client
from tether.cloud import address
from tether.cloud.tls import TlsSetupError, cert_sha256, ensure_tls, server_names
from tether.cloud.web import commands
from tether.paths import AgentPaths

StartCloud = Callable[..., Cloud]


def local(cloud: Cloud) -> Cloud:
    """The same Cloud reached at 127.0.0.1 (its public name resolves nowhere here)."""
    return dataclasses.replace(cloud, url=f"https://127.0.0.1:{cloud.port}")


def handshake(port: int, name: str, ca_file: str, ip: str = "127.0.0.1") -> x509.Certificate:
    """A verified TLS handshake with the Cloud, asking for `name` (SNI and the
    name checked), as a node whose DNS maps `name` to `ip` does."""
    ctx = ssl.create_default_context(cafile=ca_file)
    with (
        socket.create_connection((ip, port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der
    return x509.load_der_x509_certificate(der)


def tether_claim(prefix: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [command("tether-claim"), "--prefix", str(prefix), "-noreload", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        check=False,
    )


def trusting_node(prefix: Path, cloud: Cloud) -> AgentPaths:
    paths = AgentPaths(prefix)
    paths.cloud_dir.mkdir(parents=True, exist_ok=True)
    assert cloud.ca_file
    paths.cloud_fullchain_file.write_bytes(Path(cloud.ca_file).read_bytes())
    return paths


def quickstart(data_dir: Path, port: int, *args: str) -> dict[str, Any]:
    r = subprocess.run(
        [
            command("tether-cloud"),
            "quickstart",
            "--no-serve",
            "--json",
            "--data-dir",
            str(data_dir),
            "--port",
            str(port),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        check=False,
    )
    assert r.returncode == 0, r.stderr
    info = dict(json.loads(r.stdout))
    info["stderr"] = r.stderr
    return info


# -- a node on another address ------------------------------------------------------


def test_a_node_on_another_address_verifies_the_cloud_through_its_public_names(
    start_cloud: StartCloud, tmp_path: Path
) -> None:
    port = free_port()
    public = f"https://cloud.test:{port}"
    cloud = start_cloud("--public-url", public, "--san", "127.0.0.2", port=port)
    assert cloud.url == public and cloud.info["public_url"] == public
    assert cloud.info["warnings"] == []
    assert cloud.ca_file
    # The public name: a node whose DNS says cloud.test is this machine.
    served = handshake(port, "cloud.test", cloud.ca_file)
    assert {"cloud.test", "127.0.0.2"} <= set(server_names_of(served))
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        handshake(port, "elsewhere.test", cloud.ca_file)

    # The real tether-claim, verification on, from another address (127.0.0.2).
    node = trusting_node(tmp_path / "node", cloud)
    ok = tether_claim(
        node.prefix,
        f"-token={cloud.claim_token}",
        f"-rooms={cloud.room_ids[1]}",
        f"-url=https://127.0.0.2:{port}",
    )
    assert ok.returncode == 0, ok.stderr
    assert "Agent was successfully claimed." in ok.stdout
    # An address the certificate does not name: the TLS-name error, not a claim.
    other = trusting_node(tmp_path / "other", cloud)
    bad = tether_claim(
        other.prefix, f"-token={cloud.claim_token}", f"-url=https://127.0.0.3:{port}"
    )
    assert bad.returncode == 4, bad.stdout + bad.stderr
    assert "TLS:" in bad.stderr
    assert "certificate is not valid for '127.0.0.3'" in bad.stderr
    assert not other.claimed_id_file.exists()

    # The link URL the Cloud hands to a node is the public one.
    reply = Peer(local(cloud)).claim().authenticate()
    assert reply.link_url == f"wss://cloud.test:{port}/aclk"


def test_the_readme_direct_claim_works_from_another_address(
    start_cloud: StartCloud, start_agent: AgentLauncher
) -> None:
    """README "Connect a node", where the agent is installed: nothing copied
    from the Cloud's machine, only the command with the CA's fingerprint; the
    node links through the address it claimed at and goes live."""
    cloud = start_cloud("--san", "127.0.0.2")
    agent = start_agent()
    assert not agent.paths.cloud_fullchain_file.exists()
    url = f"https://127.0.0.2:{cloud.port}"
    done = subprocess.run(
        [
            command("tether-claim"),
            "--prefix",
            str(agent.prefix),
            f"-token={cloud.claim_token}",
            f"-rooms={cloud.room_ids[1]}",
            f"-url={url}",
            f"-ca-fingerprint=sha256:{cloud.ca_sha256}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Agent was successfully claimed." in done.stdout
    assert agent.paths.cloud_fullchain_file.read_bytes() == Path(str(cloud.ca_file)).read_bytes()
    node_id = agent.paths.claimed_id_file.read_text().strip()

    def live() -> bool:
        r = cloud.api("GET", f"/api/v1/spaces/{cloud.space_id}/nodes/{node_id}")
        return r.status_code == 200 and r.json()["state"] == "live"

    poll(live, 30, "the node to be live")
    # Another Cloud's fingerprint: refused before anything is trusted.
    other = start_agent()
    wrong = subprocess.run(
        [
            command("tether-claim"),
            "--prefix",
            str(other.prefix),
            f"-token={cloud.claim_token}",
            f"-url={url}",
            "-ca-fingerprint=sha256:" + "ab" * 32,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        check=False,
    )
    assert wrong.returncode != 0 and not other.paths.claimed_id_file.exists()


def server_names_of(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [
        *san.get_values_for_type(x509.DNSName),
        *map(str, san.get_values_for_type(x509.IPAddress)),
    ]


# -- the certificate follows the public URL, the CA stays -----------------------------


def test_changing_the_public_url_reissues_the_certificate_from_the_same_ca(
    tmp_path: Path,
) -> None:
    data, port = tmp_path / "cloud", free_port()
    one = quickstart(data, port, "--public-url", f"https://one.test:{port}")
    ca_pem, ca_key = (data / "ca.pem").read_bytes(), (data / "ca-key.pem").read_bytes()
    first_cert = (data / "server.pem").read_bytes()
    assert "one.test" in server_names(data / "server.pem")

    two = quickstart(data, port, "--public-url", f"https://two.test:{port}", "--san", "10.9.8.7")
    assert two["url"] == f"https://two.test:{port}"
    assert two["ca_sha256"] == one["ca_sha256"] == cert_sha256(data / "ca.pem")
    assert (data / "ca.pem").read_bytes() == ca_pem and (data / "ca-key.pem").read_bytes() == ca_key
    names = server_names(data / "server.pem")
    assert "two.test" in names and "10.9.8.7" in names and "one.test" not in names
    assert (data / "server.pem").read_bytes() != first_cert
    assert stat.S_IMODE((data / "server-key.pem").stat().st_mode) == 0o600
    assert (
        "issued the server certificate" in two["stderr"]
        and "adds 10.9.8.7, two.test" in (two["stderr"])
    )
    ca = x509.load_pem_x509_certificate(ca_pem)
    x509.load_pem_x509_certificate((data / "server.pem").read_bytes()).verify_directly_issued_by(ca)

    # Kept: a later start without the flags keeps both, and re-issues nothing.
    kept_cert = (data / "server.pem").read_bytes()
    again = quickstart(data, port)
    assert again["url"] == f"https://two.test:{port}"
    assert (data / "server.pem").read_bytes() == kept_cert
    assert "issued the server certificate" not in again["stderr"]

    # `auto` goes back to the automatic choice: loopback URL, with its warning.
    auto = quickstart(data, port, "--public-url", "auto", "--san", "auto")
    assert auto["url"] == f"https://127.0.0.1:{port}" and auto["public_url"] is None
    assert "two.test" not in server_names(data / "server.pem")
    assert auto["ca_sha256"] == one["ca_sha256"]
    assert json.loads((data / "public-address.json").read_text()) == {
        "public_url": None,
        "sans": [],
    }


def test_serve_after_quickstart_keeps_the_public_url(tmp_path: Path) -> None:
    data, port = tmp_path / "cloud", free_port()
    prepared = quickstart(data, port, "--public-url", f"https://kept.test:{port}")
    assert prepared["ca_file"]
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [command("tether-cloud"), "serve", "--data-dir", str(data), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=clean_env(),
        )
    try:

        def listening() -> bool:
            try:
                handshake(port, "kept.test", prepared["ca_file"])
            except OSError:
                return False
            return True

        poll(listening, 45, "tether-cloud serve to answer TLS for kept.test")
        poll(lambda: "listening at" in log.read_text(), 10, "the ready line")
        assert f"listening at https://kept.test:{port}" in log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


# -- what the quickstart and Connect Nodes show ------------------------------------------


def test_quickstart_prints_the_connect_nodes_commands_and_warns_on_loopback(
    tmp_path: Path,
) -> None:
    port = free_port()
    info = quickstart(tmp_path / "loop", port)
    [warning] = info["warnings"]
    assert warning.startswith(f"https://127.0.0.1:{port} only works on this machine")
    assert f"--public-url https://NAME:{port}" in warning
    assert f"WARNING: {warning}" in info["stderr"]
    # The names the certificate already holds for other machines are offered.
    for name in address.machine_addresses():
        assert name in warning and name in info["tls_names"]

    public = quickstart(tmp_path / "pub", port, "--public-url", f"https://cloud.test:{port}")
    assert public["warnings"] == [] and "WARNING" not in public["stderr"]
    ca = commands.CloudCa(f"https://cloud.test:{port}/ca.pem", public["ca_sha256"])
    linux = commands.build(
        "linux", f"https://cloud.test:{port}", "CLAIM_TOKEN", [public["room_ids"][1]], ca
    )
    for step in linux.steps:
        for line in step.text.splitlines():
            assert f"    {line}\n" in public["stderr"], line
    assert public["claim_token"] not in public["stderr"]


def admin_page(cloud: Cloud, path: str, host: str | None = None) -> str:
    at = local(cloud)
    c = session_client(at, at.admin_email, str(at.admin_password))
    try:
        r = c.get(path, headers={"Host": host} if host else None)
    finally:
        c.close()
    assert r.status_code == 200, r.text
    return r.text


def page_warnings(html: str) -> list[str]:
    return re.findall(r'<p class="warning" role="alert" id="address-warning-\d+">([^<]*)</p>', html)


def test_connect_nodes_uses_the_address_it_was_opened_at_and_warns(start_cloud: StartCloud) -> None:
    cloud = start_cloud()
    page = f"/spaces/{cloud.space_id}/connect?room={cloud.room_ids[1]}"
    loop = admin_page(cloud, page)
    [warning] = page_warnings(loop)
    assert "only works on this machine" in warning and "open this page through" in warning
    assert f"--claim-url https://127.0.0.1:{cloud.port}" in loop

    # Opened through an address of this machine that other machines use: the
    # commands carry it, and the certificate already names it.
    for ip in address.machine_addresses()[:1]:
        host = f"[{ip}]" if ":" in ip else ip
        html = admin_page(cloud, page, host=f"{host}:{cloud.port}")
        assert page_warnings(html) == []
        assert f"--claim-url https://{host}:{cloud.port}" in html
        docker = admin_page(cloud, page + "&env=docker-run", host=f"{host}:{cloud.port}")
        assert f"https://{host}:{cloud.port}/ca.pem" in docker

    # A name the certificate does not hold: nodes would refuse it, and the page says so.
    html = admin_page(cloud, page, host=f"nodes.example:{cloud.port}")
    [warning] = page_warnings(html)
    assert "Nodes will refuse this Cloud&#39;s certificate at nodes.example" in warning
    assert "--san nodes.example" in warning


def test_connect_nodes_shows_the_public_url_whatever_the_browser_used(
    start_cloud: StartCloud,
) -> None:
    port = free_port()
    cloud = start_cloud("--public-url", f"https://cloud.test:{port}", port=port)
    html = admin_page(cloud, f"/spaces/{cloud.space_id}/connect?env=docker-run")
    assert page_warnings(html) == []
    assert f"-e TETHER_CLAIM_URL=https://cloud.test:{port}" in html
    assert f"https://cloud.test:{port}/ca.pem" in html
    assert "127.0.0.1" not in html.split('id="instructions"', 1)[1]


def test_the_shown_ca_step_keeps_only_this_clouds_ca(cloud: Cloud, tmp_path: Path) -> None:
    """The CA download as shown, run by bash: the right fingerprint keeps the
    file, another one deletes it (so no later step trusts it)."""
    assert cloud.ca_sha256
    for sha, kept in ((cloud.ca_sha256, True), ("AB:" * 31 + "AB", False)):
        step = commands.build(
            "docker-run", cloud.url, "T", [], commands.CloudCa(f"{cloud.url}/ca.pem", sha)
        ).steps[0]
        work = tmp_path / ("good" if kept else "bad")
        work.mkdir()
        r = subprocess.run(
            ["bash", "-c", step.text],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_env(),
            check=False,
        )
        assert (work / commands.CA_NAME).exists() == kept, r.stdout + r.stderr
        assert ("CA fingerprint OK" in r.stdout) == kept
        assert ("Wrong CA" in r.stderr) == (not kept)


# -- the certificate rules, in process --------------------------------------------------


def _names(path: Path) -> set[str]:
    return set(server_names(path))


def test_tls_reissues_for_a_mismatched_key_or_a_foreign_issuer(tmp_path: Path) -> None:
    first = ensure_tls(tmp_path, ["a.test", "127.0.0.1"])
    assert first.created and first.reissued == "there was none"
    ca = (tmp_path / "ca.pem").read_bytes()
    # A crash between the key and the certificate: a key that does not match.
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "server-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    again = ensure_tls(tmp_path, ["a.test", "127.0.0.1"])
    assert again.reissued == "its key does not match it" and not again.created
    # A certificate some other CA issued, for the same names.
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a.test")])
    now = dt.datetime.now(dt.UTC)
    other = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=400))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("a.test")]), False)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "server.pem").write_bytes(other.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "server-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    fixed = ensure_tls(tmp_path, ["a.test", "127.0.0.1"])
    assert fixed.reissued == "it was not issued by this CA"
    assert (tmp_path / "ca.pem").read_bytes() == ca
    assert _names(tmp_path / "server.pem") == {"a.test", "127.0.0.1"}
    # Nothing changed: nothing re-issued.
    assert ensure_tls(tmp_path, ["a.test", "127.0.0.1"]).reissued is None


def test_without_the_ca_key_the_cloud_keeps_its_certificate_and_never_makes_a_new_ca(
    tmp_path: Path,
) -> None:
    ensure_tls(tmp_path, ["a.test"])
    (tmp_path / "ca-key.pem").unlink()  # the operator keeps it offline
    ca = (tmp_path / "ca.pem").read_bytes()
    kept = ensure_tls(tmp_path, ["a.test", "b.test"])
    assert kept.missing == ("b.test",) and kept.reissued is None
    assert _names(tmp_path / "server.pem") == {"a.test"}
    (tmp_path / "server.pem").unlink()
    with pytest.raises(TlsSetupError, match=r"ca-key\.pem is not here: put it back"):
        ensure_tls(tmp_path, ["a.test"])
    assert (tmp_path / "ca.pem").read_bytes() == ca  # never silently replaced


def test_public_url_and_names_are_checked() -> None:
    assert address.parse_public_url("https://Cloud.Example:8443/", serves_tls=True) == (
        "https://cloud.example:8443"
    )
    assert address.parse_public_url("https://[2001:DB8::1]", serves_tls=True) == (
        "https://[2001:db8::1]"
    )
    for bad, why in (
        ("cloud.example:8443", "not a URL"),
        ("http://cloud.example", "serves HTTPS"),
        ("https://cloud.example/tether", "must not hold a user, a path"),
        ("https://user@cloud.example", "must not hold a user"),
        ("https://cloud.example:99999", "invalid port"),
        ("https://bad_name.example", "neither a DNS name"),
    ):
        with pytest.raises(address.AddressError, match=why):
            address.parse_public_url(bad, serves_tls=True)
    # Behind a TLS-terminating proxy an http Cloud may have an https public URL.
    assert address.parse_public_url("https://lb.example", serves_tls=False)
    with pytest.raises(address.AddressError, match="neither a DNS name"):
        address.check_name("a b")


def test_automatic_names_without_a_public_url() -> None:
    auto = address.certificate_names(address.PublicAddress(), "::", ["192.0.2.9"])
    assert {"localhost", "127.0.0.1", "::1", "192.0.2.9"} <= set(auto)
    assert address.check_name(socket.gethostname()) in auto
    public = address.PublicAddress("https://cloud.test:1", ("10.1.1.1",))
    named = address.certificate_names(public, "::", ["192.0.2.9"])
    assert named[0] == "cloud.test" and "10.1.1.1" in named and "192.0.2.9" not in named
    for ip in address.machine_addresses():
        assert not address.is_loopback(ip) and not ip.startswith("fe80")


def test_bad_flags_are_refused_at_start(tmp_path: Path) -> None:
    for args, why in (
        (["--public-url", "cloud.test"], "is not a URL"),
        (["--san", "not a name"], "neither a DNS name"),
    ):
        r = subprocess.run(
            [
                command("tether-cloud"),
                "quickstart",
                "--no-serve",
                "--data-dir",
                str(tmp_path),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_env(),
            check=False,
        )
        assert r.returncode == 1 and why in r.stderr, r.stderr
    assert not (tmp_path / "public-address.json").exists()
