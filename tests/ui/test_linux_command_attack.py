"""The Linux command Connect Nodes shows, run by bash against an impostor at
the Cloud's address (anyone on the path can be one: the first download is -k).

The impostor serves its own CA and a kickstart.sh of its own. The command
carries the real Cloud's CA fingerprint, so it must stop at the CA, before it
fetches, let alone runs, any script: a script fetched with -k and run would be
the impostor's code running as root on the node."""

from __future__ import annotations

import http.server
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.fixtures.certs import Issued, issue
from tether.cloud.web import commands
from tether.cloud.web.commands import CloudCa


def colons(hex_digest: str) -> str:
    return ":".join(hex_digest[i : i + 2] for i in range(0, len(hex_digest), 2)).upper()


@contextmanager
def impostor(certs: Issued, script: str) -> Iterator[tuple[str, list[str]]]:
    """An HTTPS server with its own CA; yields its URL and the paths asked for."""
    asked: list[str] = []
    files = {"/ca.pem": certs.ca_file.read_bytes(), "/kickstart.sh": script.encode()}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            body = files.get(self.path)
            self.send_response(200 if body else 404)
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(certs.cert_file, certs.key_file)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()


def run_linux_command(url: str, pinned: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    step = commands.build("linux", url, "TOKEN", [], CloudCa(url + "/ca.pem", pinned)).steps[0]
    # The shown command writes to /tmp; this test's copy writes to its own directory.
    text = step.text.replace("/tmp/tether-", f"{tmp_path}/tether-")
    return subprocess.run(
        ["bash", "-c", text], capture_output=True, text=True, timeout=60, check=False
    )


def test_an_impostor_gets_no_script_run(tmp_path: Path) -> None:
    real_cloud = issue(tmp_path / "real", "real Cloud")
    fake = issue(tmp_path / "fake", "impostor")
    mark = tmp_path / "impostor-code-ran"
    with impostor(fake, f"#!/bin/sh\ntouch {mark}\n") as (url, asked):
        proc = run_linux_command(url, colons(real_cloud.ca_sha256), tmp_path)
    assert proc.returncode != 0
    assert "Wrong CA: this is not your Cloud" in proc.stderr
    assert asked == ["/ca.pem"]  # the script was never even fetched
    assert not mark.exists()


def test_the_right_ca_fetches_the_script_over_verified_tls(tmp_path: Path) -> None:
    cloud = issue(tmp_path / "cloud", "the Cloud")
    ran = tmp_path / "kickstart-ran"
    script = f'#!/bin/sh\nprintf "%s\\n" "$@" > {ran}\n'
    with impostor(cloud, script) as (url, asked):
        proc = run_linux_command(url, colons(cloud.ca_sha256), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert asked == ["/ca.pem", "/kickstart.sh"]
    args = ran.read_text().split()
    # kickstart gets the verified CA file and checks the fingerprint again itself.
    assert args[:4] == [
        "--claim-ca-file",
        f"{tmp_path}/tether-ca.pem",
        "--claim-ca-fingerprint",
        colons(cloud.ca_sha256),
    ]
