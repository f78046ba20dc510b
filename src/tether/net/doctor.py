"""The doctor's network hops, one at a time: DNS (every address, IPv4 and
IPv6), TCP, the proxy (its TLS for https://, its answer and authentication),
TLS to the Cloud (chain, issuer, expiry, name, the pinned CA) and the Cloud's
HTTP answer and version. Each hop is a `Check` with its result, its time and,
when it failed, the fix; the hops after a failed one are skipped.

The node's own hops (authentication, WebSocket upgrade) are added by
`tether.claim.doctor`, which also picks the settings (URL, proxy, CA) the way
the claim and the link do.
"""

from __future__ import annotations

import base64
import datetime as dt
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from tether.net.diagnose import describe_tls_error
from tether.net.proxy import ProxyChoice

RESULT_OK, RESULT_FAIL, RESULT_SKIP = "ok", "fail", "skipped"


@dataclass
class Check:
    hop: str  # dns, tcp, proxy, tls, http, auth, websocket
    result: str  # ok, fail, skipped
    detail: str
    seconds: float = 0.0
    fix: str = ""

    def line(self) -> str:
        mark = {RESULT_OK: " OK ", RESULT_FAIL: "FAIL", RESULT_SKIP: "SKIP"}[self.result]
        text = f"[{mark}] {self.hop:<9} {self.detail} ({self.seconds * 1000:.0f} ms)"
        if self.fix:
            text += f"\n       fix: {self.fix}"
        return text


class HopFailed(Exception):
    def __init__(self, detail: str, fix: str) -> None:
        super().__init__(detail)
        self.detail, self.fix = detail, fix


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> Check | None:
        return next((c for c in self.checks if c.result == RESULT_FAIL), None)

    def run(self, hop: str, step: Callable[[], str]) -> bool:
        """Run one hop (skipped after a failure); True when it passed."""
        if self.failed is not None:
            self.checks.append(Check(hop, RESULT_SKIP, "not checked: an earlier hop failed"))
            return False
        began = time.monotonic()
        try:
            detail = step()
        except HopFailed as exc:
            self.checks.append(
                Check(hop, RESULT_FAIL, exc.detail, time.monotonic() - began, exc.fix)
            )
            return False
        self.checks.append(Check(hop, RESULT_OK, detail, time.monotonic() - began))
        return True

    def skip(self, hop: str, why: str) -> None:
        self.checks.append(Check(hop, RESULT_SKIP, why))

    def as_json(self) -> dict[str, Any]:
        failed = self.failed
        return {
            "ok": failed is None,
            "failed_hop": failed.hop if failed else None,
            "checks": [asdict(c) for c in self.checks],
        }

    def text(self) -> str:
        failed = self.failed
        tail = f"the {failed.hop} hop failed" if failed else "every hop checked is fine"
        return "\n".join([*(c.line() for c in self.checks), tail])


@dataclass
class Target:
    url: str  # https://host[:port]
    proxy: ProxyChoice
    cloud_ctx: ssl.SSLContext | None  # None: the CA setting itself is broken (cloud_ctx_error)
    proxy_ssl: ssl.SSLContext | None = None
    cloud_ctx_error: str = ""
    timeout: float = 10.0

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 443


def _family(af: int) -> str:
    return "IPv6" if af == socket.AF_INET6 else "IPv4"


def _resolve(host: str, port: int, what: str) -> list[tuple[int, str]]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise HopFailed(
            f"cannot resolve {what} {host!r}: {exc.strerror or exc}",
            f"check the host name of the {what} and this node's DNS (/etc/resolv.conf)",
        ) from None
    seen: list[tuple[int, str]] = []
    for af, _t, _p, _c, sa in infos:
        if (af, str(sa[0])) not in seen:
            seen.append((af, str(sa[0])))
    return seen


def check_network(report: Report, t: Target) -> ssl.SSLContext | None:
    """DNS, TCP, proxy, TLS and HTTP; returns the verified TLS context when all passed."""
    via = t.proxy.url is not None
    first_host, first_port = (t.proxy.host, t.proxy.port) if via else (t.host, t.port)
    what = "proxy" if via else "Cloud"
    addresses: list[tuple[int, str]] = []

    def dns() -> str:
        addresses.extend(_resolve(first_host, first_port, what))
        shown = ", ".join(f"{a} ({_family(af)})" for af, a in addresses)
        note = ""
        if via and t.proxy.kind != "socks5":
            note = f"; the Cloud's name {t.host!r} is resolved by the proxy"
        elif via:
            cloud = _resolve(t.host, t.port, "Cloud")
            note = "; the Cloud " + ", ".join(f"{a} ({_family(af)})" for af, a in cloud)
        return f"{what} {first_host} -> {shown}{note}"

    report.run("dns", dns)

    def tcp() -> str:
        good, bad = [], []
        for _af, addr in addresses:
            try:
                with socket.create_connection((addr, first_port), timeout=t.timeout):
                    good.append(addr)
            except OSError as exc:
                bad.append(f"{addr}: {exc.strerror or exc}")
        if not good:
            raise HopFailed(
                f"cannot connect to the {what} at port {first_port}: " + "; ".join(bad),
                f"check that the {what} listens on {first_host}:{first_port} and that no "
                "firewall blocks it" + (" (the proxy setting's host:port)" if via else ""),
            )
        text = f"connected to {what} {', '.join(f'{a}:{first_port}' for a in good)}"
        return text + (f"; failed: {'; '.join(bad)}" if bad else "")

    report.run("tcp", tcp)

    if via:
        report.run("proxy", lambda: _proxy_hop(t))
    else:
        report.skip("proxy", "no proxy (" + t.proxy.source + ")")

    def tls() -> str:
        if t.cloud_ctx is None:
            raise HopFailed(t.cloud_ctx_error, "fix or remove the CA file it names")
        with _tunnel(t) as raw:
            try:
                return _describe_peer(_handshake(raw, t.cloud_ctx, t.host), t.host)
            except ssl.SSLCertVerificationError as exc:
                raise HopFailed(_tls_failure(exc, t), _tls_fix(exc)) from None
            except (ssl.SSLError, OSError) as exc:
                raise HopFailed(
                    f"TLS handshake with {t.host}:{t.port} failed: {exc}",
                    f"check that {t.url} is the https address of a Tether Cloud",
                ) from None

    report.run("tls", tls)
    report.run("http", lambda: _http_hop(t))
    return t.cloud_ctx if report.failed is None else None


def _open_tunnel(t: Target) -> socket.socket:
    """A TCP stream to the Cloud's host:port, through the proxy if any."""
    p = t.proxy
    if p.url is None:
        return socket.create_connection((t.host, t.port), timeout=t.timeout)
    if p.kind in ("socks5", "socks5h"):
        from python_socks import ProxyType
        from python_socks.sync import Proxy

        sp = Proxy(
            ProxyType.SOCKS5, p.host, p.port, p.username, p.password, rdns=p.kind == "socks5h"
        )
        sock: socket.socket = sp.connect(t.host, t.port, timeout=t.timeout)
        return sock
    sock = socket.create_connection((p.host, p.port), timeout=t.timeout)
    if p.kind == "https":
        ctx = t.proxy_ssl or ssl.create_default_context()
        sock = ctx.wrap_socket(sock, server_hostname=p.host)
    auth = ""
    if p.username is not None:
        cred = base64.b64encode(f"{p.username}:{p.password or ''}".encode()).decode()
        auth = f"Proxy-Authorization: Basic {cred}\r\n"
    hostport = f"[{t.host}]:{t.port}" if ":" in t.host else f"{t.host}:{t.port}"
    sock.sendall(f"CONNECT {hostport} HTTP/1.1\r\nHost: {hostport}\r\n{auth}\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head and len(head) < 16384:
        chunk = sock.recv(1)  # byte by byte: nothing of the tunnel may be read here
        if not chunk:
            break
        head += chunk
    status = head.split(b"\r\n", 1)[0].decode(errors="replace")
    parts = status.split(" ", 2)
    if len(parts) < 2 or parts[1] != "200":
        sock.close()
        raise _ProxyAnswer(status or "closed without answering")
    return sock


class _ProxyAnswer(Exception):
    """The HTTP proxy answered CONNECT with something other than 200."""


class _Tunnel:
    def __init__(self, t: Target) -> None:
        self.t = t
        self.sock: socket.socket | None = None

    def __enter__(self) -> socket.socket:
        try:
            self.sock = _open_tunnel(self.t)
        except (_ProxyAnswer, OSError) as exc:
            raise HopFailed(f"cannot reach the Cloud: {exc}", "run the doctor again") from None
        except Exception as exc:  # python-socks' errors
            raise HopFailed(f"cannot reach the Cloud: {exc}", "run the doctor again") from None
        return self.sock

    def __exit__(self, *exc: object) -> None:
        if self.sock is not None:
            self.sock.close()


def _tunnel(t: Target) -> _Tunnel:
    return _Tunnel(t)


def _proxy_hop(t: Target) -> str:
    p = t.proxy
    who = f"the proxy {p.display()}"
    fix_auth = "fix the user:pass@ part of the proxy setting (percent-encode special characters)"
    try:
        sock = _open_tunnel(t)
    except _ProxyAnswer as exc:
        text = str(exc)
        if " 407 " in f" {text} " or " 401 " in f" {text} ":
            raise HopFailed(
                f"{who} refused the login: {text}"
                + ("" if p.username else " (it needs a user and password)"),
                fix_auth,
            ) from None
        raise HopFailed(
            f"{who} would not open a tunnel to {t.host}:{t.port}: {text}",
            f"check that the proxy allows CONNECT to port {t.port} and can reach the Cloud",
        ) from None
    except ssl.SSLCertVerificationError as exc:
        raise HopFailed(
            f"TLS to {who}: {exc.verify_message or exc}",
            "put the proxy's CA (PEM) in cloud.d/proxy_ca.pem (tether-claim -proxy-ca=FILE)",
        ) from None
    except ssl.SSLError as exc:
        raise HopFailed(
            f"TLS to {who} failed: {exc}",
            "is it an https:// proxy? Use http:// for a plain one",
        ) from None
    except OSError as exc:
        raise HopFailed(f"{who} failed: {exc}", "check the proxy setting") from None
    except Exception as exc:  # python-socks
        low = str(exc).lower()
        if "auth" in low or "password" in low or "no acceptable" in low or "requested" in low:
            raise HopFailed(f"{who} refused the login: {exc}", fix_auth) from None
        raise HopFailed(
            f"{who} could not reach {t.host}:{t.port}: {exc}",
            "check the Cloud URL and that the proxy can reach it",
        ) from None
    sock.close()
    tls = ", TLS to the proxy verified" if p.kind == "https" else ""
    login = ", login accepted" if p.username else ""
    return f"{who} opened a tunnel to {t.host}:{t.port}{tls}{login}"


def _handshake(sock: socket.socket, ctx: ssl.SSLContext, host: str) -> ssl.SSLObject:
    """TLS over any stream socket, an https proxy's TLS socket included (the
    ssl module cannot wrap an SSLSocket again; memory BIOs can)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=host)
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            pending = outgoing.read()
            if pending:
                sock.sendall(pending)
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the connection closed during the TLS handshake") from None
            incoming.write(chunk)
    pending = outgoing.read()
    if pending:
        sock.sendall(pending)
    return obj


def _describe_peer(tls_sock: ssl.SSLObject, host: str) -> str:
    cert = tls_sock.getpeercert() or {}
    subject = _rdn(cert.get("subject"))
    issuer = _rdn(cert.get("issuer"))
    not_after = str(cert.get("notAfter", ""))
    days = ""
    if not_after:
        end = dt.datetime.fromtimestamp(ssl.cert_time_to_seconds(not_after), dt.UTC)
        days = f", expires {end:%Y-%m-%d} (in {(end - dt.datetime.now(dt.UTC)).days} days)"
    return (
        f"{tls_sock.version()}, certificate for {subject or host} issued by {issuer!r}"
        f"{days}, valid for {host}, chain verified"
    )


def _rdn(value: Any) -> str:
    for rdn in value or ():
        for key, val in rdn:
            if key == "commonName":
                return str(val)
    return ""


def _unverified_cert(t: Target) -> Any:
    """The Cloud's certificate fetched without verification, only to describe it."""
    from cryptography import x509

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with _tunnel(t) as raw:
            der = _handshake(raw, ctx, t.host).getpeercert(True)
    except (HopFailed, OSError, ssl.SSLError):
        return None
    return x509.load_der_x509_certificate(der) if der else None


def _tls_failure(exc: ssl.SSLCertVerificationError, t: Target) -> str:
    from cryptography.x509.oid import NameOID

    cert = _unverified_cert(t)
    issuer = None
    extra = ""
    if cert is not None:
        cns = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
        issuer = str(cns[0].value) if cns else cert.issuer.rfc4514_string()
        extra = (
            f" (certificate valid {cert.not_valid_before_utc:%Y-%m-%d} to "
            f"{cert.not_valid_after_utc:%Y-%m-%d})"
        )
    return describe_tls_error(exc, t.host, issuer) + extra


def _tls_fix(exc: ssl.SSLCertVerificationError) -> str:
    if exc.verify_code == 10:
        return "the Cloud's admin must renew its certificate; check this node's clock too"
    if exc.verify_code == 62:
        return "use the Cloud's exact host name in the URL"
    return (
        "put the Cloud's CA (PEM) in cloud.d/cloud_fullchain.pem, or claim with "
        "-ca-fingerprint=sha256:HEX"
    )


def _http_hop(t: Target) -> str:
    assert t.cloud_ctx is not None
    try:
        with httpx.Client(
            verify=t.cloud_ctx,
            proxy=t.proxy.for_httpx(t.proxy_ssl),
            trust_env=False,
            timeout=t.timeout,
        ) as c:
            health = c.get(t.url + "/api/health")
            spec = c.get(t.url + "/api/openapi.json")
    except httpx.HTTPError as exc:
        raise HopFailed(f"no HTTP answer from {t.url}: {exc}", "run the doctor again") from None
    if health.status_code != 200:
        raise HopFailed(
            f"{t.url}/api/health answered HTTP {health.status_code}, not 200",
            "is the URL the base URL of a Tether Cloud? Check it with the Cloud's admin",
        )
    version = "unknown"
    try:
        version = str(spec.json()["info"]["version"])
    except (ValueError, KeyError, TypeError):
        pass
    return f"{health.http_version} 200 from /api/health; Tether Cloud version {version}"
