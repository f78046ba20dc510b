"""Turn a failed connection into one message naming the hop that failed.

Users of the system Tether replaces got "Unknown HTTP error" for every claim
failure. Here DNS, TCP connect, proxy, TLS and HTTP are told apart, with the
name, address or certificate involved, and what to do about it.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx

from tether.net.proxy import ProxyChoice

# OpenSSL verify codes (X509_V_ERR_*) that mean "issuer not trusted here".
UNKNOWN_ISSUER_CODES = {2, 18, 19, 20, 21}
EXPIRED_CODE = 10
NOT_YET_VALID_CODE = 9
HOSTNAME_MISMATCH_CODE = 62


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _find(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    for e in _chain(exc):
        if isinstance(e, kind):
            return e
    return None


def _target(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme in ("https", "wss") else 80)
    return parts.hostname or "", port


def _proxy_status_hint(text: str, proxy: ProxyChoice, host: str, port: int) -> str:
    code = text.split(" ", 1)[0]
    who = f"the proxy {proxy.display()}"
    if code == "407" or code == "401":
        auth = "wrong user or password" if proxy.username else "it needs a user and password"
        return (
            f"{who} refused the connection: proxy authentication failed ({text}; {auth}). "
            "Fix the user:pass@ part of the proxy setting (percent-encode special characters)."
        )
    if code.startswith("5"):
        return (
            f"{who} could not reach the Cloud at {host}:{port} ({text}). Check the Cloud URL "
            "and that the proxy can reach it."
        )
    return (
        f"{who} would not open a tunnel to {host}:{port} ({text}). Check that the proxy "
        f"allows CONNECT to port {port}."
    )


def _proxy_error_text(exc: BaseException) -> str | None:
    """The proxy's own complaint, from httpx, websockets or python-socks; a
    status line ("407 Proxy Authentication Required") when it was HTTP."""
    import python_socks
    import websockets.exceptions as wsx

    chain = list(_chain(exc))
    # python-socks errors sit under websockets' generic "failed to connect to
    # SOCKS proxy": the innermost one says what the proxy answered.
    for e in reversed(chain):
        if isinstance(e, python_socks.ProxyConnectionError | python_socks.ProxyTimeoutError):
            return None  # cannot reach the proxy itself: a TCP problem, handled below
        if isinstance(e, python_socks.ProxyError):
            return str(e)
    for e in chain:
        if isinstance(e, wsx.InvalidProxyStatus):
            r = e.response
            return f"{r.status_code} {r.reason_phrase}"
        if isinstance(e, httpx.ProxyError | wsx.ProxyError):
            return str(e)
    return None


def describe_tls_error(err: ssl.SSLCertVerificationError, host: str, issuer: str | None) -> str:
    code = err.verify_code
    reason = err.verify_message or str(err)
    if code == EXPIRED_CODE:
        return (
            f"TLS: the certificate of {host} has expired ({reason}). The Cloud's admin must "
            "renew it; check this node's clock too."
        )
    if code == NOT_YET_VALID_CODE:
        return (
            f"TLS: the certificate of {host} is not valid yet ({reason}): check this node's clock."
        )
    if code == HOSTNAME_MISMATCH_CODE:
        return (
            f"TLS: the certificate presented is not valid for {host} ({reason}). Use the "
            "Cloud's exact host name in the URL."
        )
    if code in UNKNOWN_ISSUER_CODES:
        by = f" issued by {issuer!r}" if issuer else ""
        return (
            f"TLS: the certificate of {host}{by} is not trusted by this node ({reason}). "
            "If this Cloud uses a private CA, put that CA's certificate (PEM) in "
            "cloud.d/cloud_fullchain.pem."
        )
    return f"TLS: cannot verify the certificate of {host}: {reason}."


def describe_connect_error(
    exc: BaseException, url: str, proxy: ProxyChoice | None, issuer: str | None = None
) -> str:
    """One line naming the failing hop: DNS, TCP, proxy, TLS, or timeout.

    `issuer` is the untrusted certificate's issuer when the caller could fetch it
    (see `peer_certificate_issuer`).
    """
    host, port = _target(url)
    via = proxy is not None and proxy.url is not None
    where = f"the proxy {proxy.display()}" if via and proxy else f"{host}:{port}"

    proxy_text = _proxy_error_text(exc)
    if proxy_text is not None and proxy is not None:
        text = proxy_text
        low = text.lower()
        if text[:3].isdigit():
            return _proxy_status_hint(text, proxy, host, port)
        if "username/password" in low or "authentication failure" in low:
            return (
                f"the SOCKS proxy {proxy.display()} rejected the user or password. "
                "Fix the user:pass@ part of the proxy setting."
            )
        if ("requested" in low and "got" in low) or "no acceptable" in low:
            need = "needs a user and password" if not proxy.username else "does not accept them"
            return (
                f"the SOCKS proxy {proxy.display()} refused the login method: it {need} ({text})."
            )
        return f"the proxy {proxy.display()} could not reach {host}:{port}: {text}"

    if isinstance(exc, UnicodeError | httpx.InvalidURL | httpx.UnsupportedProtocol):
        return f"the URL {url!r} is not valid ({exc}): check the host name and scheme."
    tls = _find(exc, ssl.SSLCertVerificationError)
    if isinstance(tls, ssl.SSLCertVerificationError):
        return describe_tls_error(tls, host, issuer)
    gai = _find(exc, socket.gaierror)
    if gai is not None:
        name = proxy.host if via and proxy else host
        what = f"the proxy's host name {name!r}" if via else f"the Cloud's host name {name!r}"
        return f"DNS: cannot resolve {what} ({gai}). Check the URL and this node's DNS."
    if _find(exc, ConnectionRefusedError) is not None:
        return (
            f"TCP: connection to {where} refused: nothing listens there. Check the "
            "host and port" + (" of the proxy." if via else " of the Cloud URL and firewall.")
        )
    if _find(exc, httpx.TimeoutException) is not None or _find(exc, TimeoutError) is not None:
        return f"timed out connecting to {where}: check the address and any firewall."
    ssl_err = _find(exc, ssl.SSLError)
    if ssl_err is not None:
        return (
            f"TLS handshake with {host}:{port} failed ({ssl_err}). Is {url} an https "
            "endpoint of a Tether Cloud?"
        )
    if _find(exc, httpx.RemoteProtocolError) is not None:
        return f"{host}:{port} closed the connection or answered something that is not HTTP."
    os_err = _find(exc, OSError)
    if os_err is not None:
        return f"cannot connect to {where}: {os_err}"
    return f"cannot connect to {where}: {exc}"


def peer_certificate_issuer(
    url: str,
    proxy: ProxyChoice | None,
    timeout: float = 5.0,
    proxy_ssl: ssl.SSLContext | None = None,
) -> str | None:
    """Fetch the server's certificate WITHOUT verifying it, only to name its
    issuer in an error message. Nothing is sent but a HEAD request."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with (
            httpx.Client(
                verify=ctx,
                proxy=proxy.for_httpx(proxy_ssl) if proxy is not None else None,
                trust_env=False,
                timeout=timeout,
            ) as client,
            client.stream("HEAD", url) as resp,
        ):
            stream = resp.extensions.get("network_stream")
            ssl_obj = stream.get_extra_info("ssl_object") if stream is not None else None
            # Positional: the object may be the C-level _SSLSocket.
            der = ssl_obj.getpeercert(True) if ssl_obj is not None else None
    except (httpx.HTTPError, OSError, ValueError, TypeError):
        return None  # best effort: the message is still clear without the name
    if not der:
        return None
    cert = x509.load_der_x509_certificate(der)
    cns = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    if cns:
        return str(cns[0].value)
    return cert.issuer.rfc4514_string()
