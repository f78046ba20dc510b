"""The agent's link to the Cloud (the ACLK).

One `AclkClient` per agent. `run()` loops for the agent's lifetime:

1. authenticate: GET the challenge, decrypt it with `cloud.d/private.pem`,
   POST the answer, receive a one-time link token (one HTTPS keep-alive
   connection for both requests: each extra TLS handshake costs the Cloud);
2. open `wss://CLOUD/aclk` with the token, send Hello, wait for HelloAck;
3. answer the Cloud's queries (concurrently, bounded) until the link closes;
4. wait a jittered backoff and start again. Every reconnect waits, whoever
   closed; a delay the Cloud sends is a floor. Terminal faults (node removed,
   key mismatch) stop the loop until the claiming state is reloaded, and say
   which command fixes them.

TLS is verified (system CAs plus `cloud.d/cloud_fullchain.pem`; only that
file when the claim pinned the CA). The proxy, `insecure` and the pin are what
the claim used (kept in `cloud.d/cloud.conf`), else `[cloud] proxy`, through
the same parser the claim uses; see `AclkClient.effective_proxy`. Every log
line starts with `ACLK`; the link token is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import httpx
import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidProxyStatus,
    InvalidStatus,
    ProxyError,
)

from tether.agent import host, planned_stop, rotate_key
from tether.net.diagnose import describe_connect_error
from tether.net.proxy import ProxyChoice, ProxyConfigError, mask_url, resolve_proxy
from tether.net.tls import TLSConfigError, client_ssl_context, proxy_ssl_context
from tether.node.cloud_d import ClaimState, load_claim_state
from tether.paths import AgentPaths
from tether.protocol import auth
from tether.protocol.backoff import Backoff
from tether.protocol.frames import (
    CHILDREN_CAPABILITY,
    GOODBYE_REASONS,
    MAX_FRAME_SIZE,
    AlertTransition,
    ChartsSummary,
    ChildrenUpdate,
    ChildState,
    Disconnect,
    ErrorFrame,
    Frame,
    Goodbye,
    GoodbyeReason,
    Hello,
    HelloAck,
    NodeUpdate,
    QueryRequest,
    Reload,
    encode,
    make_response,
)
from tether.protocol.link import (
    CLOSE_CLONE,
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_OVER_BUDGET,
    CLOSE_REPLACED,
    OVER_BUDGET_RECONNECT_SECONDS,
    CloseLink,
    FrameReceived,
    LinkConnection,
    LinkState,
    Role,
    describe_close,
    is_terminal_close,
)

if TYPE_CHECKING:
    from tether.agent.runtime import Agent

log = logging.getLogger("tether.aclk")

QueryResult = tuple[int, str, bytes]
QueryHandler = Callable[[str, str], QueryResult | Awaitable[QueryResult]]
HelloProvider = Callable[[], Hello]


class ChildrenSource(Protocol):
    """What the link needs of a streaming parent (tether.agent.stream_parent)."""

    changed: asyncio.Event

    def child_states(self) -> list[ChildState]: ...


# At most one ChildrenUpdate per this many seconds: changes in between are
# sent together, which keeps a parent inside the Cloud's node_update budget
# (docs/protocol.md, budgets). The parent may appear after the link is up
# (streams start after it): looked for this often.
CHILDREN_MIN_INTERVAL = 1.0
CHILDREN_RECHECK = 5.0

HTTP_TIMEOUT = 15.0
HELLO_TIMEOUT = 15.0
MAX_CONCURRENT_QUERIES = 16
CLONE_FIX = (
    "if this machine was cloned from another node, give it its own identity: "
    "tether-claim -token=TOKEN -rooms=ROOMS -url=URL -id=$(uuidgen)"
)
# A link that stayed up this long resets the backoff to its base.
STABLE_SECONDS = 60.0


class LinkFault(Exception):
    """One connection attempt failed. `terminal` faults stop retrying."""

    def __init__(
        self,
        message: str,
        *,
        terminal: bool = False,
        fix: str = "",
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.terminal = terminal
        self.fix = fix
        self.retry_after = retry_after
        self.status = status  # the HTTP status of a refused link upgrade


def _describe(exc: BaseException, url: str, proxy: ProxyChoice | None) -> str:
    """One line naming the failing hop (DNS, TCP, proxy, TLS ...)."""
    if isinstance(exc, InvalidProxyStatus):
        status = exc.response.status_code
        via = proxy.display() if proxy else "the proxy"
        if status == 407:
            return (
                f"the HTTP proxy {via} requires authentication (407): fix the user:pass@ "
                "part of the proxy setting it came from (claim again with -proxy=, or "
                "[cloud] proxy)"
            )
        return f"the HTTP proxy {via} refused to connect to {url} (HTTP {status})"
    if isinstance(exc, ProxyError):
        cause = exc.__cause__ or exc
        via = proxy.display() if proxy else "the proxy"
        return f"the SOCKS proxy {via} failed: {cause}"
    return describe_connect_error(exc, url, proxy)


def _masked(setting: str) -> str:
    try:
        return mask_url(setting)
    except ValueError:  # unparsable: show no part of it that could be a password
        return "<unparsable [cloud] proxy>"


def _set_nodelay(ws: ClientConnection) -> None:
    # python-socks makes its socket without TCP_NODELAY: small frames (query
    # answers) would wait for delayed ACKs without this.
    sock = ws.transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class AclkClient:
    def __init__(
        self,
        paths: AgentPaths,
        claim: ClaimState,
        proxy_setting: str,
        hello_provider: HelloProvider,
        query_handler: QueryHandler,
        *,
        insecure: bool = False,
        env: Mapping[str, str] | None = None,
        proxy_origin: str = "[cloud] proxy",
        proxy_set_at_run_time: bool = False,
        children_source: Callable[[], ChildrenSource | None] = lambda: None,
    ) -> None:
        self.paths = paths
        self.children_source = children_source
        self.cloud_capabilities: list[str] = []  # the last HelloAck's
        self.children_announced = 0  # ChildrenUpdate frames sent, for aclk-state
        self.claim = claim
        self.proxy_setting = proxy_setting
        self.proxy_origin = proxy_origin
        self.proxy_set_at_run_time = proxy_set_at_run_time
        self.hello_provider = hello_provider
        self.query_handler = query_handler
        self.insecure = insecure
        self.env = dict(os.environ if env is None else env)
        self.backoff = Backoff(1.0, 300.0)

        self._ws: ClientConnection | None = None
        self._link: LinkConnection | None = None
        self._stopping = False
        self._wake = asyncio.Event()
        self._queries = asyncio.Semaphore(MAX_CONCURRENT_QUERIES)
        self._tasks: set[asyncio.Future[Any]] = set()
        self._disconnect_hint: float | None = None
        # The resume token for the next connection (docs/protocol.md, resume):
        # (token, monotonic expiry), and the link settings of the last answer.
        self._resume: tuple[str, float] | None = None
        self._reply: auth.PasswordReply | None = None
        self.last_auth: str | None = None  # "resume" or "challenge", for aclk-state

        self.connected_since: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.fix: str | None = None
        self.next_retry_at: float | None = None
        self.link_url: str | None = None
        self.proxy: ProxyChoice | None = None
        self.terminal = False
        self.session_id: str | None = None
        self.attempts = 0
        self.queries_answered = 0

    # -- public interface ------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self.connected_since is not None

    def status(self) -> dict[str, Any]:
        def iso(t: float | None) -> str | None:
            return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

        proxy = self.proxy
        if proxy is None and self.claim.cloud_base_url:
            with contextlib.suppress(ProxyConfigError):
                proxy = self.effective_proxy()
        return {
            "connected": self.is_connected,
            "state": self._state_text(),
            "connected_since": iso(self.connected_since),
            "last_error": self.last_error,
            "last_error_at": iso(self.last_error_at),
            "fix": self.fix,
            "next_retry_at": iso(self.next_retry_at),
            "link_url": self.link_url,
            "proxy": proxy.display() if proxy else None,
            "proxy_source": proxy.source if proxy else None,
            "insecure": self._insecure(),
            "ca_fingerprint": self.claim.ca_fingerprint,
            "terminal": self.terminal,
            "session_id": self.session_id,
            "attempts": self.attempts,
            "queries_answered": self.queries_answered,
            "last_auth": self.last_auth,
            "children_announced": self.children_announced,
        }

    def effective_proxy(self) -> ProxyChoice:
        """The link's proxy. Precedence: a value this process set at start (the
        TETHER_CLAIM_PROXY of claim on start) > the proxy the claim used (kept
        in cloud.d/cloud.conf) > `[cloud] proxy` in tether.conf."""
        base = (self.claim.cloud_base_url or "").rstrip("/")
        if self.claim.proxy is not None and not self.proxy_set_at_run_time:
            where = self.claim.proxy_source or "the claim"
            source = f"{where} at claim time, kept in {self.paths.cloud_conf_file}"
            return resolve_proxy(self.claim.proxy, base, self.env, source=source)
        return resolve_proxy(self.proxy_setting, base, self.env, source=self.proxy_origin)

    def _insecure(self) -> bool:
        return self.insecure or self.claim.insecure

    def reload_claiming_state(self, claim: ClaimState) -> None:
        """The claim changed (tether-claim, reload-claiming-state): start afresh."""
        changed = claim != self.claim
        self.claim = claim
        self.proxy = None
        if changed:  # another node or Cloud: the old resume token is not for it
            self._resume = None
            self._reply = None
        if changed or self.terminal:
            self.terminal = False
            self.fix = None
            self.backoff.reset()
            if self._ws is not None and self._link is not None:
                if self._ready_to_connect():
                    log.info("ACLK claiming state changed: reconnecting")
                    self._keep(asyncio.ensure_future(self._leave(None, "claim changed")))
                else:
                    why = "unclaimed" if not claim.claimed_id else "cloud disabled in cloud.conf"
                    log.info("ACLK %s: disconnecting", why)
                    self._keep(asyncio.ensure_future(self._leave("unclaim", why)))
            self._wake.set()

    def send_alert(self, transition: AlertTransition) -> None:
        self._send_soon(transition)

    def send_node_update(self, update: NodeUpdate) -> None:
        self._send_soon(update)

    async def stop(
        self, reason: str = "shutdown", expected_back_seconds: float | None = None
    ) -> None:
        """Tell the Cloud why the agent leaves, then close the link."""
        self._stopping = True
        self._wake.set()
        ws, link = self._ws, self._link
        if ws is not None and link is not None and link.state is LinkState.READY:
            why: GoodbyeReason = "shutdown"
            if reason in GOODBYE_REASONS:
                why = reason  # type: ignore[assignment]
            with contextlib.suppress(Exception):
                bye = Goodbye(reason=why, expected_back_seconds=expected_back_seconds)
                await ws.send(link.send(bye))
            log.info("ACLK disconnecting: %s", reason)
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(CLOSE_GOING_AWAY, reason[:100]), 5)
        for task in list(self._tasks):
            task.cancel()

    async def run(self) -> None:
        """Keep the link up until stop(); never raises for link faults."""
        announce = True
        while not self._stopping:
            if not self._ready_to_connect():
                self.next_retry_at = None
                announce = True
                await self._wait(None)
                continue
            if announce:
                announce = False
                try:
                    shown = self.effective_proxy().display()
                except ProxyConfigError:
                    shown = f"unusable proxy setting {_masked(self.proxy_setting)!r}"
                log.info(
                    "ACLK starting the link: node %s, Cloud %s, proxy %s%s",
                    self.claim.claimed_id,
                    self.claim.cloud_base_url,
                    shown,
                    ", TLS verification OFF (insecure)" if self._insecure() else "",
                )
            hint: float | None = None
            started = time.monotonic()
            try:
                await self._connect_once()
            except LinkFault as fault:
                hint = fault.retry_after
                self._record_error(str(fault), fault.fix or None)
                if fault.terminal:
                    self.terminal = True
                    log.error("ACLK stopped retrying: %s. To fix: %s", fault, fault.fix)
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not end the link for good
                log.exception("ACLK unexpected error")
                self._record_error(f"unexpected error: {type(exc).__name__}: {exc}", None)
            finally:
                self._ws = None
                self._link = None
                self.connected_since = None
            if self._stopping:
                break
            if not self._ready_to_connect():
                continue  # unclaimed or disabled meanwhile: wait for a new claim
            if time.monotonic() - started > STABLE_SECONDS:
                self.backoff.reset()
            if self._disconnect_hint is not None:
                hint = max(hint or 0.0, self._disconnect_hint)
            self._disconnect_hint = None
            delay = self.backoff.next_delay(hint)
            self.next_retry_at = time.time() + delay
            log.info("ACLK reconnecting in %.1f s (attempt %d)", delay, self.backoff.attempts + 1)
            if await self._wait(delay) and not self._stopping:
                log.info("ACLK claiming state changed: connecting now")
        self.next_retry_at = None

    # -- internals -------------------------------------------------------------------

    def _ready_to_connect(self) -> bool:
        c = self.claim
        return bool(c.enabled and c.claimed_id and c.cloud_base_url) and not self.terminal

    def _state_text(self) -> str:
        if self._stopping:
            return "stopped"
        if not self.claim.enabled:
            return "cloud disabled in cloud.d/cloud.conf"
        if not self.claim.claimed_id:
            return "not claimed"
        if self.terminal:
            return "stopped retrying (see last_error and fix)"
        if self.is_connected:
            return "connected"
        if self.next_retry_at is not None and self.next_retry_at > time.time():
            return "waiting to reconnect"
        return "connecting"

    async def _wait(self, seconds: float | None) -> bool:
        """Sleep, or until woken by a claim change; True when woken."""
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def _record_error(self, message: str, fix: str | None) -> None:
        self.last_error = message
        self.last_error_at = time.time()
        self.fix = fix
        if fix:
            log.warning("ACLK %s. To fix: %s", message, fix)
        else:
            log.warning("ACLK %s", message)

    async def _leave(self, goodbye: GoodbyeReason | None, reason: str) -> None:
        """Close the current link, first saying Goodbye when there is a reason to."""
        ws, link = self._ws, self._link
        if ws is None or link is None:
            return
        if goodbye is not None and link.state is LinkState.READY:
            with contextlib.suppress(Exception):
                await ws.send(link.send(Goodbye(reason=goodbye)))
        with contextlib.suppress(Exception):
            await ws.close(CLOSE_NORMAL, reason[:100])

    def _keep(self, task: asyncio.Future[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send_soon(self, frame: Frame) -> None:
        ws, link = self._ws, self._link
        if ws is None or link is None or link.state is not LinkState.READY:
            return  # nothing to send on; the next Hello carries current state
        self._keep(asyncio.ensure_future(self._send(ws, link, frame)))

    async def _send(self, ws: ClientConnection, link: LinkConnection, frame: Frame) -> None:
        if link.state is not LinkState.READY:
            return
        with contextlib.suppress(ConnectionClosed):
            await ws.send(link.send(frame))

    async def _connect_once(self) -> None:
        claimed_id = self.claim.claimed_id
        base = (self.claim.cloud_base_url or "").rstrip("/")
        assert claimed_id is not None
        self.attempts += 1
        try:
            proxy = self.effective_proxy()
        except ProxyConfigError as exc:
            raise LinkFault(
                str(exc), terminal=True, fix="fix the proxy setting it names, then restart"
            ) from None
        self.proxy = proxy
        try:
            ctx = client_ssl_context(self.paths, self._insecure(), self.claim.ca_fingerprint)
            proxy_ssl = proxy_ssl_context(self.paths) if proxy.kind == "https" else None
        except TLSConfigError as exc:
            fix = "fix or remove the file it names, then tether-cli reload-claiming-state"
            raise LinkFault(str(exc), terminal=True, fix=fix) from None

        ws = await self._resume_link(claimed_id, ctx, proxy, proxy_ssl)
        if ws is None:
            fresh = await self._authenticate(base, claimed_id, ctx, proxy, proxy_ssl)
            self._check_link_url(base, fresh.link_url)
            self._reply = fresh
            ws = await self._open(fresh, ctx, proxy, proxy_ssl, f"Bearer {fresh.link_token}")
            self.last_auth = "challenge"
        assert self._reply is not None
        keepalive = max(1.0, self._reply.keepalive_seconds)
        if self._stopping:  # stop() came while connecting
            await ws.close(CLOSE_GOING_AWAY, "agent stopping")
            return
        _set_nodelay(ws)
        link = LinkConnection(Role.AGENT)
        self._ws, self._link = ws, link
        try:
            await self._serve(ws, link, keepalive)
        except ConnectionClosed as exc:
            raise self._closed_fault(exc) from None
        finally:
            with contextlib.suppress(Exception):
                await ws.close()

    async def _resume_link(
        self,
        claimed_id: str,
        ctx: Any,
        proxy: ProxyChoice,
        proxy_ssl: ssl.SSLContext | None,
    ) -> ClientConnection | None:
        """The link opened with the resume token the Cloud gave (one TLS
        connection, no challenge); None to authenticate with the challenge:
        no usable token, or the Cloud refused it (401: expired, used, or a
        Cloud that does not know resume tokens). A token is kept while the
        Cloud is unreachable or busy, and dropped once it was presented to it."""
        resume, reply = self._resume, self._reply
        if resume is None or reply is None or resume[1] <= time.monotonic():
            self._resume = None
            return None
        header = {auth.RESUME_HEADER: auth.resume_header(claimed_id, resume[0])}
        try:
            ws = await self._open(reply, ctx, proxy, proxy_ssl, None, header)
        except LinkFault as fault:
            if fault.status != 401:
                raise  # not judged (Cloud down, restarting, saturated): try it again later
            self._resume = None
            log.info("ACLK the Cloud refused the resume token: authenticating with the challenge")
            return None
        self._resume = None
        self.last_auth = "resume"
        return ws

    async def _open(
        self,
        reply: auth.PasswordReply,
        ctx: Any,
        proxy: ProxyChoice,
        proxy_ssl: ssl.SSLContext | None,
        authorization: str | None,
        headers: dict[str, str] | None = None,
    ) -> ClientConnection:
        """The `/aclk` WebSocket; LinkFault (with the HTTP status) when refused."""
        self.link_url = reply.link_url
        self.backoff.base_seconds = max(0.1, reply.backoff.base_seconds)
        self.backoff.max_seconds = max(self.backoff.base_seconds, reply.backoff.max_seconds)
        keepalive = max(1.0, reply.keepalive_seconds)
        extra = dict(headers or {})
        if authorization is not None:
            extra["Authorization"] = authorization
        secure = reply.link_url.startswith("wss://")
        try:
            return await connect(
                reply.link_url,
                ssl=ctx if secure else None,
                # Explicit: websockets would otherwise read proxies from the environment.
                **proxy.for_websockets(proxy_ssl),
                compression=None,
                additional_headers=extra,
                ping_interval=keepalive,
                ping_timeout=keepalive,
                max_size=MAX_FRAME_SIZE,
                open_timeout=HTTP_TIMEOUT,
                user_agent_header="tether-agent",
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            kind = auth.classify_auth_error(status, None)
            if status in (403, 404):
                raise LinkFault(
                    f"the Cloud refused the link (HTTP {status}): {kind.meaning}",
                    terminal=True,
                    fix=kind.fix,
                    status=status,
                ) from None
            retry_after: float | None = None  # 429 (closed over budget) or 503: a floor
            with contextlib.suppress(ValueError):
                retry_after = float(exc.response.headers.get("Retry-After", ""))
            raise LinkFault(
                f"the Cloud refused the link (HTTP {status})",
                retry_after=retry_after,
                status=status,
            ) from None
        except (OSError, TimeoutError, ProxyError, httpx.HTTPError) as exc:
            raise LinkFault(_describe(exc, reply.link_url, proxy)) from None
        except Exception as exc:
            raise LinkFault(_describe(exc, reply.link_url, proxy)) from None

    async def _authenticate(
        self,
        base: str,
        claimed_id: str,
        ctx: Any,
        proxy: ProxyChoice,
        proxy_ssl: ssl.SSLContext | None = None,
    ) -> auth.PasswordReply:
        try:
            private_pem = self.paths.private_key_file.read_bytes()
        except OSError as exc:
            raise LinkFault(
                f"cannot read the node's private key {self.paths.private_key_file}: "
                f"{exc.strerror or exc}",
                terminal=True,
                fix=auth.REMOVED_FIX,
            ) from None
        async with httpx.AsyncClient(
            verify=ctx, proxy=proxy.for_httpx(proxy_ssl), trust_env=False, timeout=HTTP_TIMEOUT
        ) as http:
            try:
                r = await http.get(base + auth.challenge_path(claimed_id))
                self._raise_for_auth(r)
                challenge = msgspec.json.decode(r.content, type=auth.ChallengeReply)
                sealed = auth.b64decode(challenge.challenge)
                # With an interrupted key rotation's pending key as a fallback.
                answer = rotate_key.decrypt_challenge(self.paths, private_pem, sealed)
                # Naming the challenge lets the Cloud answer a lost one with 401
                # (ask again) instead of 403 (wrong key, which stops the agent).
                request = auth.PasswordRequest(
                    response=auth.b64encode(answer), challenge_id=challenge.challenge_id or None
                )
                body = msgspec.json.encode(request)
                valid_until = time.monotonic() + max(1, challenge.expires_in) - 1
                while True:
                    try:
                        r = await http.post(
                            base + auth.password_path(claimed_id),
                            content=body,
                            headers={"Content-Type": "application/json"},
                        )
                        break
                    except httpx.TransportError:
                        # The connection was cut before the answer came back:
                        # the challenge still holds, so answer it again (on a
                        # new connection) rather than back off and start over.
                        if time.monotonic() >= valid_until:
                            raise
                        log.info("ACLK the answer's connection was cut: answering again")
                        await asyncio.sleep(0.1)
                self._raise_for_auth(r)
                return msgspec.json.decode(r.content, type=auth.PasswordReply)
            except auth.AuthError as exc:
                raise LinkFault(
                    f"authentication failed: {exc}", terminal=True, fix=auth.REMOVED_FIX
                ) from None
            except msgspec.MsgspecError as exc:
                raise LinkFault(f"the Cloud sent an unexpected auth answer: {exc}") from None
            except httpx.HTTPError as exc:
                raise LinkFault(_describe(exc, base, proxy)) from None

    @staticmethod
    def _raise_for_auth(r: httpx.Response) -> None:
        if r.status_code == 200:
            return
        key: str | None = None
        with contextlib.suppress(msgspec.MsgspecError):
            key = msgspec.json.decode(r.content, type=auth.ErrorReply).error_msg_key
        kind = auth.classify_auth_error(r.status_code, key)
        retry_after: float | None = None
        with contextlib.suppress(ValueError):
            retry_after = float(r.headers.get("Retry-After", ""))
        raise LinkFault(
            f"authentication refused: {kind.key} (HTTP {r.status_code}): {kind.meaning}",
            terminal=kind.terminal,
            fix=kind.fix,
            retry_after=retry_after,
        )

    @staticmethod
    def _check_link_url(base: str, link_url: str) -> None:
        link, cloud = urlsplit(link_url), urlsplit(base)
        allowed = ("wss",) if cloud.scheme == "https" else ("wss", "ws")
        if link.scheme not in allowed or not link.hostname:
            raise LinkFault(f"the Cloud sent an unusable link URL {link_url!r}")

    async def _serve(self, ws: ClientConnection, link: LinkConnection, keepalive: float) -> None:
        hello = self.hello_provider()
        if auth.RESUME_CAPABILITY not in hello.capabilities:  # this client resumes
            hello = msgspec.structs.replace(
                hello, capabilities=[*hello.capabilities, auth.RESUME_CAPABILITY]
            )
        if CHILDREN_CAPABILITY not in hello.capabilities:  # and announces children
            hello = msgspec.structs.replace(
                hello, capabilities=[*hello.capabilities, CHILDREN_CAPABILITY]
            )
        self.cloud_capabilities = []
        await ws.send(link.send(hello))
        try:
            first = await asyncio.wait_for(ws.recv(decode=False), HELLO_TIMEOUT)
        except TimeoutError:
            raise LinkFault(f"the Cloud did not answer Hello within {HELLO_TIMEOUT:g} s") from None
        except ConnectionClosed as exc:
            raise self._closed_fault(exc) from None
        await self._handle(ws, link, first)
        if link.state is not LinkState.READY:
            return
        self.connected_since = time.time()
        self.session_id = link.session_id
        self.last_error = None
        self.fix = None
        self.next_retry_at = None
        via = f" via {self.proxy.display()}" if self.proxy and self.proxy.url else ""
        log.info(
            "ACLK connected to %s%s (session %s, keepalive %g s)",
            self.link_url,
            via,
            link.session_id,
            keepalive,
        )
        announcer: asyncio.Task[None] | None = None
        if CHILDREN_CAPABILITY in self.cloud_capabilities:  # an older Cloud gets none
            announcer = asyncio.create_task(self._announce_children(ws, link))
        try:
            async for message in ws:
                if isinstance(message, str):
                    await ws.close(4000, "text frames are not part of the protocol")
                    raise LinkFault("the Cloud sent a text message; closed the link")
                await self._handle(ws, link, message)
                if link.state is not LinkState.READY:
                    break  # Disconnect, Reload or a protocol error
        except ConnectionClosed as exc:
            raise self._closed_fault(exc) from None
        finally:
            if announcer is not None:
                announcer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await announcer
        rcvd = ws.close_code
        if rcvd is not None and rcvd != CLOSE_NORMAL and not self._stopping:
            raise self._closed_fault_code(rcvd, ws.close_reason or "")
        if not self._stopping:
            log.info("ACLK link closed (%s)", describe_close(rcvd or CLOSE_NORMAL))

    async def _handle(self, ws: ClientConnection, link: LinkConnection, data: bytes) -> None:
        for event in link.receive_data(data):
            if isinstance(event, CloseLink):
                await ws.close(event.code, event.reason)
                raise LinkFault(f"closed the link: {event.reason}")
            assert isinstance(event, FrameReceived)
            frame = event.frame
            if isinstance(frame, QueryRequest):
                self._keep(asyncio.ensure_future(self._answer(ws, link, frame)))
            elif isinstance(frame, HelloAck):
                # The state machine recorded session and keepalive.
                self._take_resume_token(frame.resume_token, frame.resume_expires_in)
                self.cloud_capabilities = list(frame.capabilities)
            elif isinstance(frame, Disconnect):
                self._take_resume_token(frame.resume_token, frame.resume_expires_in)
                self._disconnect_hint = frame.reconnect_after_seconds
                log.info(
                    "ACLK the Cloud asked to disconnect: %s %s (come back after %s s)",
                    frame.code,
                    frame.text,
                    frame.reconnect_after_seconds,
                )
                await ws.close(CLOSE_NORMAL, "disconnect requested")
            elif isinstance(frame, Reload):
                log.info("ACLK the Cloud asked to reload: %s", frame.reason or "no reason given")
                self.claim = load_claim_state(self.paths)
                await ws.close(CLOSE_NORMAL, "reload requested")
            elif isinstance(frame, ErrorFrame):
                log.warning("ACLK the Cloud reported an error: %s %s", frame.code, frame.text)

    async def _announce_children(self, ws: ClientConnection, link: LinkConnection) -> None:
        """Tell the Cloud about this parent's children (docs/protocol.md,
        children): the whole set first, then what changed, at most one frame
        per CHILDREN_MIN_INTERVAL. Ends with the link (cancelled)."""
        sent: dict[str, ChildState] | None = None
        while link.state is LinkState.READY:
            source = self.children_source()
            if source is None:
                await asyncio.sleep(CHILDREN_RECHECK)
                continue
            source.changed.clear()
            now = {c.id: c for c in source.child_states()}
            frame: ChildrenUpdate | None
            if sent is None:
                frame = ChildrenUpdate(children=list(now.values()), full=True)
            else:
                changes = [c for k, c in now.items() if sent.get(k) != c]
                changes += [
                    msgspec.structs.replace(c, state="removed")
                    for k, c in sent.items()
                    if k not in now
                ]
                frame = ChildrenUpdate(children=changes) if changes else None
            if frame is not None:
                await self._send(ws, link, frame)
                self.children_announced += 1
                sent = now
            await asyncio.sleep(CHILDREN_MIN_INTERVAL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(source.changed.wait(), CHILDREN_RECHECK)

    def _take_resume_token(self, token: str, expires_in: float) -> None:
        if token and expires_in > 0:
            # A margin for the time the next upgrade takes to reach the Cloud.
            self._resume = (token, time.monotonic() + expires_in * 0.9)

    async def _answer(self, ws: ClientConnection, link: LinkConnection, req: QueryRequest) -> None:
        async with self._queries:
            try:
                result = self.query_handler(req.path, req.query)
                if inspect.isawaitable(result):
                    result = await asyncio.wait_for(result, max(0.001, req.timeout_ms / 1000))
                status, content_type, body = result
                frame: Frame = make_response(req.id, status, content_type, body)
                if len(encode(frame)) > MAX_FRAME_SIZE:
                    frame = ErrorFrame(
                        code="too_large",
                        text=f"the answer exceeds the {MAX_FRAME_SIZE} byte frame limit",
                        id=req.id,
                    )
            except TimeoutError:
                frame = ErrorFrame(code="timeout", text="no answer in time", id=req.id)
            except Exception as exc:
                log.exception("ACLK query %s failed", req.path)
                frame = ErrorFrame(code="internal", text=type(exc).__name__, id=req.id)
            if link.state is LinkState.READY:
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(link.send(frame))
                    self.queries_answered += 1

    def _closed_fault(self, exc: ConnectionClosed) -> LinkFault:
        if exc.rcvd is not None:
            return self._closed_fault_code(exc.rcvd.code, exc.rcvd.reason)
        return LinkFault("the link was lost (no close frame: network, proxy or Cloud gone)")

    def _closed_fault_code(self, code: int, reason: str) -> LinkFault:
        text = f"the Cloud closed the link: {describe_close(code)} ({code})"
        if reason:
            text += f": {reason}"
        if code == CLOSE_CLONE:  # this identity is live on another host: stop
            fix = (
                f"this machine is a copy of {self.claim.claimed_id} ({reason or 'another host'}): "
                "claim it as a new node with tether-claim -token=TOKEN -rooms=ROOMS -url=URL "
                "-id=$(uuidgen)"
            )
            return LinkFault(text, terminal=True, fix=fix)
        if is_terminal_close(code):
            return LinkFault(text, terminal=True, fix=auth.REMOVED_FIX)
        if code == CLOSE_REPLACED:
            # Another host presents this node's identity: usually a cloned VM or image.
            # Come back by the challenge, which revokes every resume token of
            # the node: one that leaked stops working (docs/protocol.md, resume).
            self._resume = None
            return LinkFault(text, fix=CLONE_FIX)
        if code == CLOSE_OVER_BUDGET:
            # The Disconnect before it says how long to stay away; this is the floor.
            return LinkFault(text, retry_after=OVER_BUDGET_RECONNECT_SECONDS)
        return LinkFault(text)


# -- wiring into the running agent ---------------------------------------------------


def _read_id(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def hello_from_agent(agent: Agent) -> Hello:
    """Built afresh for every connection, so metadata changes reach the Cloud."""
    info = agent.host_info()
    charts = agent.charts_summary()
    return Hello(
        agent_version=str(info.get("version", "")),
        hostname=agent.hostname,
        os=f"{info.get('os_name', '')} {info.get('os_version', '')}".strip(),
        machine_guid=agent.machine_guid,
        # Host fingerprints: let the Cloud tell a cloned machine from a restart.
        machine_id=_read_id(host.path("/etc/machine-id")),
        boot_id=_read_id(host.path("/proc/sys/kernel/random/boot_id")),
        charts=ChartsSummary(
            charts=int(charts.get("charts_count", 0)),
            dimensions=int(charts.get("dimensions_count", 0)),
            collectors=[str(c) for c in charts.get("collectors", [])],
        ),
        capabilities=["query", "alerts", "goodbye"],
        labels=dict(agent.host_labels),  # [host labels]
    )


def alert_frame(t: Mapping[str, Any]) -> AlertTransition:
    """An alert transition as the health engine reports it, as a frame."""
    value = t.get("value")
    return AlertTransition(
        name=str(t.get("name", "")),
        chart=str(t.get("chart", "")),
        old_status=str(t.get("old_status", "")),
        new_status=str(t.get("status", "")),
        value=float(value) if isinstance(value, int | float) else None,
        at=float(t.get("when") or time.time()),
    )


def goodbye_reason(stop_reason: str) -> GoodbyeReason:
    text = stop_reason.lower()
    if "upgrade" in text:
        return "upgrade"
    if "restart" in text:
        return "restart"
    return "shutdown"


def attach_to_agent(agent: Agent, insecure: bool = False) -> AclkClient:
    """Create the link for a running agent and hook it in; then `await client.run()`."""
    from tether.agent.api import local_query

    client = AclkClient(
        agent.paths,
        agent.claim,
        agent.config.get("cloud", "proxy"),
        hello_provider=lambda: hello_from_agent(agent),
        query_handler=lambda path, query: local_query(agent, path, query),
        insecure=insecure,
        proxy_origin=agent.config.origin("cloud", "proxy"),
        proxy_set_at_run_time=agent.config.set_at_run_time("cloud", "proxy"),
        children_source=lambda: agent.stream_parent,  # set once [stream] starts
    )
    agent.attach_link(client)

    async def on_shutdown(reason: str) -> None:
        planned = planned_stop.planned_for(agent)  # tether-cli shutdown-agent --reason ...
        if planned is not None:
            await client.stop(planned.reason, planned.back_in_seconds)
        else:
            await client.stop(goodbye_reason(reason))

    agent.add_shutdown_hook(on_shutdown)
    with contextlib.suppress(RuntimeError):  # no running loop: no automatic rotation
        asyncio.get_running_loop()
        client._keep(asyncio.ensure_future(rotate_key.schedule(agent, client)))
    agent.add_alert_listener(lambda t: client.send_alert(alert_frame(t)))
    agent.labels_listeners.append(lambda labels: client.send_node_update(NodeUpdate(labels=labels)))
    return client
