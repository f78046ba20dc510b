"""The one proxy parser the claim command and the link share.

A setting is `none`, `env`, `socks5://`, `socks5h://`, `http://` or `https://`
(TLS to the proxy, then CONNECT), each URL with optional `user:pass@`
(percent-encoded characters are decoded once).
`resolve_proxy` turns a setting into a `ProxyChoice`: the exact URL to hand to
httpx or websockets, and where it came from, so logs can say which proxy is in
use (password masked) and why.

Note: httpx sends the Cloud's host name to a SOCKS proxy for both `socks5://`
and `socks5h://` (the proxy resolves it); the websockets client resolves
locally for `socks5://`. Both forms therefore work for claim and link.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx

SCHEMES = ("socks5", "socks5h", "http", "https")
DEFAULT_PORTS = {"socks5": 1080, "socks5h": 1080, "http": 80, "https": 443}
ACCEPTED_FORMS = (
    "none, env, socks5://[user:pass@]host:port, socks5h://[user:pass@]host:port, "
    "http://[user:pass@]host:port or https://[user:pass@]host:port"
)
# Checked in this order for `env`; https first because the Cloud is https.
ENV_PROXY_VARS = (
    "https_proxy",
    "HTTPS_PROXY",
    "http_proxy",
    "HTTP_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "socks_proxy",
)


class ProxyConfigError(ValueError):
    """A proxy setting that cannot be used; the message names it and the fix."""


@dataclass(frozen=True)
class ProxyChoice:
    url: str | None  # None: connect directly
    kind: str  # "none", "socks5", "socks5h", "http" or "https"
    source: str  # "-proxy", "[cloud] proxy in FILE", "environment variable X", ...
    host: str = ""
    port: int = 0
    username: str | None = None
    password: str | None = None

    def display(self) -> str:
        """The proxy for logs and messages, password masked."""
        if self.url is None:
            return f"no proxy ({self.source})"
        return f"{mask_url(self.url)} (from {self.source})"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def for_httpx(self, proxy_ssl: ssl.SSLContext | None = None) -> httpx.Proxy | None:
        """The proxy as httpx takes it; an https proxy's TLS uses `proxy_ssl`
        (system CAs plus `cloud.d/proxy_ca.pem`, see `tether.net.tls`)."""
        if self.url is None:
            return None
        if self.kind == "https":
            return httpx.Proxy(self.url, ssl_context=proxy_ssl)
        return httpx.Proxy(self.url)

    def for_websockets(self, proxy_ssl: ssl.SSLContext | None = None) -> dict[str, Any]:
        """`connect()` keyword arguments for websockets: it refuses `proxy_ssl`
        for a plain proxy and needs it for an https one."""
        if self.url is None:
            return {"proxy": None}
        if self.kind == "https":
            return {"proxy": self.url, "proxy_ssl": proxy_ssl or ssl.create_default_context()}
        return {"proxy": self.url}


def direct(source: str) -> ProxyChoice:
    return ProxyChoice(url=None, kind="none", source=source)


def mask_url(url: str) -> str:
    """`scheme://user:***@host:port`: safe to print."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    user = parts.username or ""
    hostport = parts.netloc.rpartition("@")[2]
    secret = ":***" if parts.password is not None else ""
    return f"{parts.scheme}://{user}{secret}@{hostport}"


def parse_proxy_url(value: str, source: str, *, default_scheme: str | None = None) -> ProxyChoice:
    """Parse one proxy URL; `default_scheme` applies to `host:port` values
    from the environment (curl's convention: plain means http)."""
    raw = value.strip()
    if "://" not in raw:
        if default_scheme is None:
            raise ProxyConfigError(
                f"proxy setting {raw!r} ({source}) is not valid: use {ACCEPTED_FORMS}"
            )
        raw = f"{default_scheme}://{raw}"
    # urlsplit splits user info at the LAST '@', so a password with a raw '@' works.
    parts = urlsplit(raw)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ProxyConfigError(
            f"proxy setting {mask_url(raw)!r} ({source}) has unsupported scheme "
            f"{parts.scheme!r}: use {ACCEPTED_FORMS}"
        )
    host = parts.hostname
    if not host:
        raise ProxyConfigError(
            f"proxy setting {mask_url(raw)!r} ({source}) has no host: use {ACCEPTED_FORMS}"
        )
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError as exc:
        raise ProxyConfigError(
            f"proxy setting {mask_url(raw)!r} ({source}) has an invalid port: {exc}"
        ) from exc
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ProxyConfigError(
            f"proxy setting {mask_url(raw)!r} ({source}) must not have a path: use {ACCEPTED_FORMS}"
        )
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    # Rebuild one canonical URL, user info quoted once, so httpx and
    # websockets (which both unquote) see the same credentials.
    userinfo = ""
    if username is not None:
        userinfo = quote(username, safe="")
        if password is not None:
            userinfo += ":" + quote(password, safe="")
        userinfo += "@"
    hostpart = f"[{host}]" if ":" in host else host
    url = f"{scheme}://{userinfo}{hostpart}:{port}"
    return ProxyChoice(
        url=url,
        kind=scheme,
        source=source,
        host=host,
        port=port,
        username=username,
        password=password,
    )


def _bypassed(no_proxy: str, target_url: str) -> bool:
    """True when `no_proxy` (comma list: `*`, host, `.domain`, host:port) covers the target."""
    target = urlsplit(target_url)
    host = (target.hostname or "").lower().rstrip(".")
    port = target.port or (443 if target.scheme in ("https", "wss") else 80)
    for entry in no_proxy.replace(" ", ",").split(","):
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        entry_port: int | None = None
        if entry.count(":") == 1:
            name, _, p = entry.partition(":")
            if p.isdigit():
                entry, entry_port = name, int(p)
        entry = entry.strip("[]")
        if entry.startswith("*."):
            entry = entry[1:]
        if entry_port is not None and entry_port != port:
            continue
        name = entry.lstrip(".").rstrip(".")
        if host == name or host.endswith("." + name):
            return True
    return False


def from_environment(target_url: str, env: Mapping[str, str]) -> ProxyChoice:
    no_proxy = env.get("no_proxy") or env.get("NO_PROXY") or ""
    if no_proxy and _bypassed(no_proxy, target_url):
        name = "no_proxy" if env.get("no_proxy") else "NO_PROXY"
        return direct(f"environment variable {name} covers {urlsplit(target_url).hostname}")
    for name in ENV_PROXY_VARS:
        value = env.get(name, "").strip()
        if value:
            default = "socks5h" if name == "socks_proxy" else "http"
            return parse_proxy_url(value, f"environment variable {name}", default_scheme=default)
    return direct("proxy = env, but no proxy variable is set")


def resolve_proxy(
    setting: str,
    target_url: str,
    env: Mapping[str, str] = os.environ,
    source: str = "[cloud] proxy",
) -> ProxyChoice:
    """Turn a `[cloud] proxy` / `-proxy=` setting into the proxy to use for `target_url`."""
    value = setting.strip()
    if value == "" or value.lower() == "none":
        return direct(source if value else "none")
    if value.lower() == "env":
        return from_environment(target_url, env)
    return parse_proxy_url(value, source)


def claim_proxy(
    *,
    noproxy: bool,
    cli_proxy: str | None,
    config_proxy: str,
    config_file: os.PathLike[str] | str | None,
    target_url: str,
    env: Mapping[str, str] = os.environ,
) -> ProxyChoice:
    """The claim's precedence: `-noproxy` > `-proxy=` > `[cloud] proxy` > none."""
    if noproxy:
        return direct("-noproxy")
    if cli_proxy is not None and cli_proxy.strip():
        return resolve_proxy(cli_proxy, target_url, env, source="-proxy")
    where = f"[cloud] proxy in {config_file}" if config_file else "[cloud] proxy"
    return resolve_proxy(config_proxy, target_url, env, source=where)
