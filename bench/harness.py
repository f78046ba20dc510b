"""Shared pieces of the link benchmarks: a real Cloud process, limits, figures.

The Cloud runs as `tether-cloud serve` (after `tether-cloud quickstart
--no-serve --json` prepared an admin, a Space and its tokens), so the figures
include everything the real server does: uvicorn with uvloop and
websockets-sansio, TLS with the Cloud's ECDSA P-256 certificate, the database.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

BIN = Path(sys.executable).parent
START_TIMEOUT = 60.0


def raise_nofile() -> int:
    """Lift the soft open-files limit to the hard one (20,000 here); children inherit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child, without proxy variables (loopback only)."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(extra)
    return env


@dataclass
class Cloud:
    data_dir: Path
    port: int
    url: str
    ca_file: str
    api_token: str
    claim_token: str
    space_id: str
    room_ids: list[str]
    database_url: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    log_file: Path = field(default_factory=Path)
    restarts: int = 0
    # quickstart's whole JSON line (the admin's email and password among it).
    info: dict[str, Any] = field(default_factory=dict)

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _db_args(self) -> list[str]:
        return ["--database-url", self.database_url] if self.database_url else []

    def start(self, timeout: float = START_TIMEOUT) -> float:
        """Start `tether-cloud serve`; return the seconds until it answered."""
        t0 = time.monotonic()
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(BIN / "tether-cloud"),
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--data-dir",
                    str(self.data_dir),
                    *self._db_args(),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=clean_env(),
            )
        ctx = self.ssl_context()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise SystemExit(
                    f"tether-cloud serve exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                # 5 s a try: a Cloud taking a reconnect storm answers slowly.
                with (
                    socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw,
                    ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
                ):
                    tls.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if tls.recv(64).startswith(b"HTTP/1.1 200"):
                        return time.monotonic() - t0
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise SystemExit(
            f"tether-cloud serve did not answer in {timeout:.0f} s:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 30.0) -> float:
        """SIGTERM, SIGKILL after `timeout`; return the seconds the stop took."""
        t0 = time.monotonic()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return time.monotonic() - t0

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:])

    def rss(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def cpu_seconds(self) -> float:
        t = psutil.Process(self.pid).cpu_times()
        return float(t.user + t.system)


def prepare_cloud(
    data_dir: Path, port: int | None = None, database_url: str | None = None
) -> Cloud:
    """`tether-cloud quickstart --no-serve --json`: admin, Space, rooms, tokens, CA."""
    port = port or free_port()
    db = ["--database-url", database_url] if database_url else []
    out = subprocess.run(
        [
            str(BIN / "tether-cloud"),
            "quickstart",
            "--no-serve",
            "--json",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            *db,
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=120,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"tether-cloud quickstart failed ({out.returncode}):\n{out.stderr}")
    info: dict[str, Any] = json.loads(out.stdout.splitlines()[0])
    return Cloud(
        data_dir=data_dir,
        port=port,
        url=info["url"],
        ca_file=info["ca_file"],
        api_token=info["api_token"],
        claim_token=info["claim_token"],
        space_id=info["space_id"],
        room_ids=info["room_ids"],
        database_url=database_url,
        log_file=data_dir / "cloud.log",
        info=info,
    )


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(p / 100 * len(s) + 0.5) - 1))
    return s[k]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:.1f} MB"


def machine() -> str:
    import platform

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = psutil.virtual_memory().total / 2**30
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, Python "
        f"{platform.python_version()}, {platform.system()} {platform.release()}; "
        f"load average now {load}"
    )


class Simulator:
    """`bench/simulator.py` as a child process, driven over stdin/stdout JSON lines."""

    def __init__(self, cloud: Cloud, nodes: int, *extra: str) -> None:
        import queue
        import threading

        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).with_name("simulator.py")),
                "--url",
                cloud.url,
                "--ca",
                cloud.ca_file,
                "--token",
                cloud.claim_token,
                "--rooms",
                cloud.room_ids[0],
                "-n",
                str(nodes),
                *extra,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=clean_env(),
        )
        out = self.proc.stdout
        assert out is not None

        def pump() -> None:
            for line in out:
                self.events.put(json.loads(line))
            self.events.put({"event": "exit", "code": self.proc.wait()})

        threading.Thread(target=pump, daemon=True).start()

    def wait(self, event: str, timeout: float, on: Any = None) -> dict[str, Any]:
        """The next `event` line; other lines go to `on` (e.g. print progress)."""
        import queue

        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise SystemExit(
                    f"the simulator sent no {event!r} within {timeout:.0f} s"
                ) from None
            if msg["event"] == event:
                return msg
            if msg["event"] in ("exit", "claim_failed"):
                raise SystemExit(f"simulator: {msg}")
            if on is not None:
                on(msg)

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.wait(15)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)

    @property
    def pid(self) -> int:
        return self.proc.pid


def count_live(cloud: Cloud) -> dict[str, int]:
    """Node states in the Cloud's own API (GET /api/v1/spaces/{id}/nodes)."""
    import collections
    import http.client

    conn = http.client.HTTPSConnection(
        "127.0.0.1", cloud.port, context=cloud.ssl_context(), timeout=30
    )
    try:
        conn.request(
            "GET",
            f"/api/v1/spaces/{cloud.space_id}/nodes",
            headers={"Authorization": f"Bearer {cloud.api_token}"},
        )
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise SystemExit(f"node list: HTTP {r.status} {body[:200]!r}")
        return dict(collections.Counter(n["state"] for n in json.loads(body)))
    finally:
        conn.close()
