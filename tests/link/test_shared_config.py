"""Scale-out start-up (tether.cloud.shared_config, `tether-cloud init`): two
processes started at the same moment against a fresh database, each with a
data directory of its own (two machines), migrate one after the other, make
one CA between them and both serve with it; `init` then makes the first admin
once, who signs in on either; a data dir holding another CA is refused."""

from __future__ import annotations

import json
import ssl
import subprocess
import uuid
from pathlib import Path

import httpx

from tests.fixtures.common import clean_env, command, free_port, poll
from tests.fixtures.scaleout import NATS_URL
from tether.cloud.tls import cert_sha256, ensure_tls


def _ready(port: int, ca_file: Path) -> bool:
    try:
        ctx = ssl.create_default_context(cafile=str(ca_file))
        r = httpx.get(f"https://127.0.0.1:{port}/api/ready", verify=ctx, trust_env=False, timeout=3)
    except (OSError, ssl.SSLError, httpx.HTTPError):
        return False
    return r.status_code == 200


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [command("tether-cloud"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
    )


def test_two_processes_started_at_once_on_a_fresh_database_serve_one_ca(
    pg_url: str, tmp_path: Path
) -> None:
    prefix = "t" + uuid.uuid4().hex[:10]
    dirs = [tmp_path / "machine-1", tmp_path / "machine-2"]
    ports = [free_port(), free_port()]
    logs = [tmp_path / "cloud-1.log", tmp_path / "cloud-2.log"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for d, port, log_file in zip(dirs, ports, logs, strict=True):
            with log_file.open("ab") as log:
                procs.append(
                    subprocess.Popen(
                        [
                            command("tether-cloud"), "serve", "--port", str(port),
                            "--data-dir", str(d), "--database-url", pg_url,
                            "--nats-url", NATS_URL, "--nats-subject-prefix", prefix,
                        ],
                        stdout=log, stderr=log, env=clean_env(),
                    )
                )  # fmt: skip
        poll(
            lambda: all(_ready(p, d / "ca.pem") for p, d in zip(ports, dirs, strict=True)),
            90,
            "both processes serving",
        )
        # One CA, one secret key: each process is verified with the other's CA.
        ca = [(d / "ca.pem").read_bytes() for d in dirs]
        assert ca[0] == ca[1]
        assert (dirs[0] / "secret.key").read_bytes() == (dirs[1] / "secret.key").read_bytes()
        assert _ready(ports[1], dirs[0] / "ca.pem") and _ready(ports[0], dirs[1] / "ca.pem")
        made = [log_file.read_text().count("stored ca.pem") for log_file in logs]
        assert sorted(made) == [0, 1], made  # exactly one made them

        # `init` from a third machine: the same CA, the first admin once.
        third = tmp_path / "machine-3"
        args = ("init", "--data-dir", str(third), "--database-url", pg_url, "--nats-url", NATS_URL)
        first = _cli(*args, "--json")
        assert first.returncode == 0, first.stderr
        out = json.loads(first.stdout)
        assert out["files_made"] is False
        assert out["ca_sha256"] == cert_sha256(dirs[0] / "ca.pem")
        password = out["admin_password"]
        assert password
        again = json.loads(_cli(*args, "--json").stdout)
        assert again["admin_password"] is None  # made once, never printed again
        for port in ports:
            ctx = ssl.create_default_context(cafile=str(dirs[0] / "ca.pem"))
            r = httpx.post(
                f"https://127.0.0.1:{port}/api/v1/auth/login",
                json={"email": out["admin_email"], "password": password},
                verify=ctx,
                trust_env=False,
                timeout=15,
            )
            assert r.status_code == 200, r.text

        # A data dir with a CA of its own is refused, never overwritten.
        other = tmp_path / "machine-4"
        ensure_tls(other, ["localhost"])
        own_ca = (other / "ca.pem").read_bytes()
        refused = _cli("init", "--data-dir", str(other), "--database-url", pg_url,
                       "--nats-url", NATS_URL)  # fmt: skip
        assert refused.returncode == 1
        assert "ca.pem the other Cloud processes of this database use" in refused.stderr
        assert (other / "ca.pem").read_bytes() == own_ca
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
