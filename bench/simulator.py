"""A simulated fleet of agents speaking the REAL protocol to a real Cloud.

    .venv/bin/python bench/simulator.py --url URL --ca CA_FILE --token TOKEN \\
        --rooms ROOM_ID -n 1000

Each simulated node, in one asyncio process (uvloop):

1. has its own RSA-2048 key, taken from `bench/.cache/rsa2048-keys.pem`
   (keys are generated once, with a process pool, and reused across runs);
2. is claimed with `PUT /api/v1/spaces/nodes/{id}` (the claim endpoint
   `tether-claim` uses, same JSON body), a fresh node id per run;
3. authenticates like the agent: GET the challenge, decrypt it (RSA-OAEP),
   POST the answer, both on ONE keep-alive TLS connection (a small raw HTTP/1.1
   client: httpx is slow under concurrency, design.md);
4. opens `wss://.../aclk` with the link token (`websockets` asyncio client,
   per-message deflate off, pings every keepalive like the agent), sends Hello
   and waits for HelloAck;
5. answers the Cloud's pings (websockets does) and QueryRequests (a small
   JSON body);
   With a resume token from the last HelloAck or Disconnect it skips 3 and
   presents the token (`Tether-Resume`, docs/protocol.md 1b); a 401 falls
   back to 3 at once. An answer whose connection was cut is sent again while
   the challenge holds (counted as a cut answer). `--no-resume` acts as an
   agent older than resume tokens;
6. after any close waits the protocol's jittered backoff
   (`tether.protocol.backoff.Backoff` with the Cloud's policy; a
   `Disconnect.reconnect_after_seconds` is a floor), then goes back to 3. A
   terminal close (4003, or HTTP 403/404 on the upgrade) stops that node for
   good, as it stops the agent; the "linked" line counts those as `stopped`.

It reports JSON lines on stdout and takes commands on stdin, one per line:
`report` (print the counters and the reconnect times since the last `mark`),
`mark` (clear them), `quit` (or end of input: exit). The benchmarks drive it
this way so the Cloud and the fleet are separate processes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import ssl
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.hashes import SHA256
from rawhttp import HttpConnection, HttpError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tether.protocol import auth
from tether.protocol.backoff import Backoff
from tether.protocol.frames import (
    MAX_FRAME_SIZE,
    Disconnect,
    Hello,
    HelloAck,
    QueryRequest,
    Reload,
    make_response,
)
from tether.protocol.link import CloseLink, LinkConnection, Role, is_terminal_close

CACHE = Path(__file__).resolve().parent / ".cache"
KEY_FILE = CACHE / "rsa2048-keys.pem"
KEY_END = b"-----END RSA PRIVATE KEY-----\n"
STABLE_SECONDS = 60.0  # like the agent: a link up this long resets the backoff
OAEP = padding.OAEP(mgf=padding.MGF1(SHA256()), algorithm=SHA256(), label=None)


def out(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": time.time(), **fields}) + "\n")
    sys.stdout.flush()


# -- keys ------------------------------------------------------------------------------


def _generate_one(_: int) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def load_keys(
    n: int, key_file: Path = KEY_FILE, reuse: bool = False
) -> tuple[list[rsa.RSAPrivateKey], int]:
    """n distinct RSA-2048 keys from the cache, generating (and caching) the
    missing ones; with `reuse`, the cached keys in turn when there are fewer
    than n (a key then registered for several nodes: the RSA work per link is
    the same, and generating 10,000 keys takes an hour on a busy machine)."""
    pems: list[bytes] = []
    if key_file.exists():
        # A piece without its END line is a write that was cut off: left out.
        pieces = key_file.read_bytes().split(KEY_END)[:-1]
        pems = [p + KEY_END for p in pieces if p.strip()]
    if reuse and pems:
        pems = [pems[i % len(pems)] for i in range(n)]
    missing = max(0, n - len(pems))
    if missing:
        key_file.parent.mkdir(parents=True, exist_ok=True)
        with ProcessPoolExecutor(os.cpu_count() or 2) as pool, open(key_file, "ab") as f:
            for pem in pool.map(_generate_one, range(missing), chunksize=16):
                f.write(pem)
                pems.append(pem)
        os.chmod(key_file, 0o600)
    keys = []
    for pem in pems[:n]:
        # Our own cached keys: skipping the RSA consistency check saves ~50 ms each.
        key = serialization.load_pem_private_key(pem, None, unsafe_skip_rsa_key_validation=True)
        assert isinstance(key, rsa.RSAPrivateKey)
        keys.append(key)
    return keys, missing


# -- the fleet ---------------------------------------------------------------------------


class Fleet:
    def __init__(self, a: argparse.Namespace, keys: list[rsa.RSAPrivateKey]) -> None:
        self.a = a
        self.base = a.url.rstrip("/")
        self.ssl = ssl.create_default_context(cafile=a.ca)
        self.keys = keys
        self.ids = [str(uuid.uuid4()) for _ in keys]
        self.linked: set[int] = set()
        self.stopped: set[int] = set()  # told to stop for good (4003 / HTTP 403, 404)
        self.first_linked = 0
        self.connects: list[float] = []  # wall times of HelloAcks since the last mark
        self.drops: list[float] = []  # wall times of link closes since the last mark
        self.delays: list[float] = []  # backoff delays chosen since the last mark
        self.closes: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.queries = 0
        # Resume tokens (docs/protocol.md, resume): node -> its token, and the
        # link settings of its last answer (the URL to present it at).
        self.tokens: dict[int, str] = {}
        self.replies: dict[int, auth.PasswordReply] = {}
        self.resumed = 0  # links set up with a resume token since the last mark
        self.challenged = 0  # ... and with the challenge
        self.resume_refused = 0  # tokens the Cloud refused (401: fell back to the challenge)
        self.cut_answers = 0  # answers whose connection was cut before the reply
        self.refused: collections.Counter[str] = collections.Counter()  # upgrades refused
        self.first_gate = asyncio.Semaphore(a.concurrency)
        self.all_linked = asyncio.Event()
        self.body = json.dumps({"hostname": "sim", "cpu": {"user": 1.5, "system": 0.5}}).encode()

    # -- claim

    async def claim_all(self) -> int:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(len(self.keys)):
            queue.put_nowait(i)
        failures: list[str] = []

        async def worker() -> None:
            conn = HttpConnection(self.base, self.ssl)
            try:
                while not queue.empty():
                    i = queue.get_nowait()
                    err = await self.claim(conn, i)
                    if err:
                        failures.append(err)
            finally:
                await conn.close()

        await asyncio.gather(*(worker() for _ in range(self.a.claim_concurrency)))
        for err in failures[:3]:
            out("claim_failed", error=err)
        return len(failures)

    async def claim(self, conn: HttpConnection, i: int) -> str | None:
        pub = (
            self.keys[i]
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        body = json.dumps(
            {
                "node": {"id": self.ids[i], "hostname": f"sim-{i:05d}"},
                "token": self.a.token,
                "rooms": self.a.rooms.split(",") if self.a.rooms else [],
                "publicKey": pub.decode(),
                "mGUID": self.ids[i],
            }
        ).encode()
        for _ in range(3):
            try:
                r = await conn.request(
                    "PUT",
                    f"/api/v1/spaces/nodes/{self.ids[i]}",
                    body,
                    {"Content-Type": "application/json"},
                )
            except HttpError as exc:
                err = str(exc)
                continue
            if r.status == 204:
                return None
            err = f"HTTP {r.status} {r.body[:200]!r}"
            if r.status < 500:
                break
        return err

    # -- link

    async def node(self, i: int) -> None:
        backoff = Backoff(1.0, 300.0)
        first = True
        while True:
            hint: float | None = None
            started = time.monotonic()
            try:
                if first:
                    async with self.first_gate:
                        ws = await self.open_link(i, backoff)
                else:
                    ws = await self.open_link(i, backoff)
                hint = await self.serve(i, ws)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every fault is counted, then backed off
                self.errors[_short(exc)] += 1
                if isinstance(exc, InvalidStatus):
                    self.refused[str(exc.response.status_code)] += 1
                terminal = isinstance(exc, _Terminal) or (
                    isinstance(exc, InvalidStatus) and exc.response.status_code in (403, 404)
                )
                if terminal:  # like the agent: stop retrying, say so
                    self.stopped.add(i)
                    self._check_done()
                    return
            first = False
            if time.monotonic() - started > STABLE_SECONDS:
                backoff.reset()
            delay = backoff.next_delay(hint)
            self.delays.append(delay)
            await asyncio.sleep(delay)

    async def open_link(self, i: int, backoff: Backoff) -> ClientConnection:
        token, reply = self.tokens.get(i), self.replies.get(i)
        if self.a.resume and token and reply is not None:
            header = {auth.RESUME_HEADER: auth.resume_header(self.ids[i], token)}
            try:
                ws = await self.websocket(reply, header)
            except InvalidStatus as exc:
                if exc.response.status_code != 401:
                    raise  # not judged (busy, restarting): the token is kept
                self.resume_refused += 1
            else:
                self.tokens.pop(i, None)  # used; the HelloAck brings the next
                self.resumed += 1
                return ws
            self.tokens.pop(i, None)
        reply = await self.authenticate(i)
        self.replies[i] = reply
        backoff.base_seconds = max(0.1, reply.backoff.base_seconds)
        backoff.max_seconds = max(backoff.base_seconds, reply.backoff.max_seconds)
        ws = await self.websocket(reply, {"Authorization": f"Bearer {reply.link_token}"})
        self.challenged += 1
        return ws

    async def authenticate(self, i: int) -> auth.PasswordReply:
        """Challenge and answer on one keep-alive connection, like the agent; an
        answer whose connection was cut is sent again while the challenge holds."""
        node_id = self.ids[i]
        conn = HttpConnection(self.base, self.ssl)
        try:
            r = await conn.request("GET", auth.challenge_path(node_id))
            if r.status != 200:
                raise RuntimeError(f"challenge HTTP {r.status}")
            challenge = msgspec.json.decode(r.body, type=auth.ChallengeReply)
            valid_until = time.monotonic() + max(1, challenge.expires_in) - 1
            answer = self.keys[i].decrypt(auth.b64decode(challenge.challenge), OAEP)
            body = msgspec.json.encode(
                auth.PasswordRequest(
                    response=auth.b64encode(answer), challenge_id=challenge.challenge_id or None
                )
            )
            while True:
                try:
                    r = await conn.request(
                        "POST",
                        auth.password_path(node_id),
                        body,
                        {"Content-Type": "application/json"},
                    )
                    break
                except HttpError:
                    self.cut_answers += 1
                    if time.monotonic() >= valid_until:
                        raise
                    await conn.close()
                    conn = HttpConnection(self.base, self.ssl)
            if r.status != 200:
                raise RuntimeError(f"password HTTP {r.status}")
            return msgspec.json.decode(r.body, type=auth.PasswordReply)
        finally:
            await conn.close()

    async def websocket(
        self, reply: auth.PasswordReply, headers: dict[str, str]
    ) -> ClientConnection:
        keepalive = max(1.0, reply.keepalive_seconds)
        return await connect(
            reply.link_url,
            ssl=self.ssl,
            proxy=None,
            compression=None,
            additional_headers=headers,
            ping_interval=keepalive if self.a.client_pings else None,
            ping_timeout=keepalive if self.a.client_pings else None,
            max_size=MAX_FRAME_SIZE,
            open_timeout=60,
            user_agent_header="tether-sim",
        )

    async def serve(self, i: int, ws: ClientConnection) -> float | None:
        """Hello, then answer queries until the link closes; the Cloud's delay hint."""
        link = LinkConnection(Role.AGENT)
        hint: float | None = None
        await ws.send(
            link.send(
                Hello(
                    agent_version="sim",
                    hostname=f"sim-{i:05d}",
                    os="linux",
                    machine_guid=self.ids[i],
                    machine_id=f"sim-machine-{i}",
                    boot_id="sim-boot",
                    capabilities=["query", auth.RESUME_CAPABILITY] if self.a.resume else ["query"],
                )
            )
        )
        try:
            async for data in ws:
                if isinstance(data, str):
                    await ws.close(4000, "text frame")
                    break
                for ev in link.receive_data(data):
                    if isinstance(ev, CloseLink):
                        await ws.close(ev.code, ev.reason)
                        break
                    frame = ev.frame
                    if isinstance(frame, HelloAck):
                        if frame.resume_token:
                            self.tokens[i] = frame.resume_token
                        self.on_linked(i)
                    elif isinstance(frame, QueryRequest):
                        self.queries += 1
                        body = data_body(frame.query, i) if frame.path == DATA else self.body
                        await ws.send(
                            link.send(make_response(frame.id, 200, "application/json", body))
                        )
                    elif isinstance(frame, Disconnect):
                        hint = frame.reconnect_after_seconds
                        if frame.resume_token:
                            self.tokens[i] = frame.resume_token
                    elif isinstance(frame, Reload):
                        await ws.close(1000, "reload")
        except ConnectionClosed:
            pass
        finally:
            self.on_closed(i, ws)
        return hint

    def on_linked(self, i: int) -> None:
        self.linked.add(i)
        self.connects.append(time.time())
        self._check_done()

    def _check_done(self) -> None:
        if len(self.linked) + len(self.stopped) == len(self.keys):
            self.all_linked.set()

    def on_closed(self, i: int, ws: ClientConnection) -> None:
        if i in self.linked:
            self.linked.discard(i)
            self.drops.append(time.time())
        code = ws.close_code if ws.close_code is not None else 1006
        self.closes[str(code)] += 1
        if is_terminal_close(code):
            raise _Terminal(code)

    def report(self) -> dict[str, Any]:
        return {
            "nodes": len(self.keys),
            "linked": len(self.linked),
            "stopped": len(self.stopped),
            "queries": self.queries,
            "connects": self.connects,
            "drops": self.drops,
            "delays": self.delays,
            "closes": dict(self.closes),
            "errors": dict(self.errors.most_common(8)),
            "resumed": self.resumed,
            "challenged": self.challenged,
            "resume_refused": self.resume_refused,
            "cut_answers": self.cut_answers,
            "refused": dict(self.refused),
        }

    def mark(self) -> None:
        self.connects, self.drops, self.delays = [], [], []
        self.closes.clear()
        self.errors.clear()
        self.refused.clear()
        self.resumed = self.challenged = self.resume_refused = self.cut_answers = 0


DATA = "/api/v1/data"


def data_body(query: str, i: int) -> bytes:
    """An /api/v1/data answer shaped like the agent's (newest row first) for
    the chart and range asked, two dimensions of made-up values, so composite
    charts (tether.cloud.composite) can be drawn from simulated nodes."""
    from urllib.parse import parse_qs

    q = {k: v[-1] for k, v in parse_qs(query).items()}
    after = min(-1, int(q.get("after", "-300") or -300))
    points = max(1, min(int(q.get("points", "60") or 60), -after))
    step = max(1, -after // points)
    now = int(time.time()) // step * step
    names = [d for d in q.get("dimensions", "").split(",") if d] or ["user", "system"]
    rows = [
        [now - k * step, *((i * 7 + k * (j + 1)) % 50 + 1.5 for j in range(len(names)))]
        for k in range(points)
    ]
    return json.dumps(
        {
            "id": q.get("chart", ""),
            "view_update_every": step,
            "result": {"labels": ["time", *names], "data": rows},
        }
    ).encode()


class _Terminal(Exception):
    pass


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _short(exc: BaseException) -> str:
    """The error's kind and text without node ids, so equal faults count together."""
    return f"{type(exc).__name__}: {_UUID.sub('ID', str(exc))[:80]}"


async def progress(fleet: Fleet, started: float) -> None:
    last = -1
    while not fleet.all_linked.is_set():
        await asyncio.sleep(1.0)
        if len(fleet.linked) != last:
            last = len(fleet.linked)
            out(
                "progress",
                linked=last,
                stopped=len(fleet.stopped),
                seconds=round(time.monotonic() - started, 2),
                errors=dict(fleet.errors.most_common(3)),
            )


async def commands(fleet: Fleet, go: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().strip()
        if line == "report":
            out("report", **fleet.report())
        elif line == "go":
            go.set()
        elif line == "mark":
            fleet.mark()
            out("marked")
        elif line in ("quit", ""):
            return


async def amain(a: argparse.Namespace) -> int:
    t0 = time.monotonic()
    keys, generated = await asyncio.to_thread(load_keys, a.nodes, KEY_FILE, a.reuse_keys)
    out("keys", n=len(keys), generated=generated, seconds=round(time.monotonic() - t0, 2))
    fleet = Fleet(a, keys)
    t0 = time.monotonic()
    failed = await fleet.claim_all()
    out("claimed", n=len(keys) - failed, failed=failed, seconds=round(time.monotonic() - t0, 3))
    if failed:
        return 1
    go = asyncio.Event()
    cmd = asyncio.create_task(commands(fleet, go))
    if a.wait_go:
        await asyncio.wait(
            [cmd, asyncio.create_task(go.wait())], return_when=asyncio.FIRST_COMPLETED
        )
        if cmd.done():
            return 0
    t0 = time.monotonic()
    tasks = [asyncio.create_task(fleet.node(i)) for i in range(len(keys))]
    prog = asyncio.create_task(progress(fleet, t0))
    linked = asyncio.create_task(fleet.all_linked.wait())
    await asyncio.wait([cmd, linked], return_when=asyncio.FIRST_COMPLETED)
    if linked.done():
        out(
            "linked",
            n=len(fleet.linked),
            stopped=len(fleet.stopped),
            seconds=round(time.monotonic() - t0, 3),
            errors=dict(fleet.errors),
            closes=dict(fleet.closes),
        )
        fleet.first_linked = len(fleet.linked)
        await cmd
    for t in [*tasks, prog, linked]:
        t.cancel()
    out("bye")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--url", required=True, help="the Cloud's URL, e.g. https://127.0.0.1:19443")
    ap.add_argument("--ca", required=True, help="the Cloud's CA file (quickstart's ca_file)")
    ap.add_argument("--token", required=True, help="the Space's claiming token")
    ap.add_argument("--rooms", default="", help="comma-separated War Room ids")
    ap.add_argument("-n", "--nodes", type=int, default=100, help="simulated nodes (default 100)")
    ap.add_argument(
        "--concurrency",
        type=int,
        default=50,
        help="first connections in flight at once (default 50; reconnects are "
        "paced only by each node's own backoff, like real agents)",
    )
    ap.add_argument(
        "--claim-concurrency",
        type=int,
        default=8,
        help="claim requests in flight at once (default 8)",
    )
    ap.add_argument(
        "--no-client-pings",
        dest="client_pings",
        action="store_false",
        help="do not ping from the node side (the real agent pings every keepalive)",
    )
    ap.add_argument(
        "--reuse-keys",
        action="store_true",
        help="with fewer cached keys than nodes, register each cached key for several nodes",
    )
    ap.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="do not offer or use resume tokens (an agent older than them)",
    )
    ap.add_argument(
        "--wait-go",
        action="store_true",
        help="after claiming, wait for `go` on stdin before linking",
    )
    a = ap.parse_args()
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if a.nodes + 100 > hard:
        ap.error(
            f"{a.nodes} links need more than the open-files limit ({hard}): run several simulators"
        )
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        code = runner.run(amain(a))
    sys.stdout.flush()
    os._exit(code)  # skip closing thousands of links one by one: the Cloud sees them drop


if __name__ == "__main__":
    sys.exit(main())
