"""The Cloud's address as nodes see it: the public URL, the names in its
certificate, and whether a URL can only work on this machine.

`--public-url` and `--san` are kept in `public-address.json` in the data dir,
so a later `serve` without them keeps what `quickstart --public-url` chose;
`--public-url auto` and `--san auto` go back to the automatic choice. With no
public URL the certificate names the machine's hostname and its non-loopback
addresses (`psutil.net_if_addrs`), and the commands the Cloud prints use the
address they were asked through (a loopback one gets a warning).
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from tether.atomic import write_atomic

FILE_NAME = "public-address.json"
AUTO = "auto"
# Always in a generated certificate: the Cloud's own machine reaches it so.
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_HOST_HEADER = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)(:[0-9]{1,5})?$")


class AddressError(ValueError):
    """A public URL or certificate name that cannot be used; says how to fix it."""


@dataclass(frozen=True)
class PublicAddress:
    url: str | None = None  # normalized --public-url; None: automatic
    sans: tuple[str, ...] = ()  # --san values, normalized


def check_name(value: str, what: str = "--san") -> str:
    """A DNS name or an IP address, normalized (lower case, compressed IP)."""
    raw = value.strip().rstrip(".")
    try:
        return str(ipaddress.ip_address(raw.strip("[]")))
    except ValueError:
        pass
    name = raw.lower()
    if len(name) <= 253 and name and all(_LABEL.match(label) for label in name.split(".")):
        return name
    raise AddressError(
        f"{what} {value!r} is neither a DNS name (letters, digits, '-' and dots) nor an IP address"
    )


def parse_public_url(value: str, *, serves_tls: bool) -> str:
    """`scheme://host[:port]`, checked: what nodes and browsers will use."""
    fix = "give it as https://NAME[:PORT], the name or address nodes reach this Cloud at"
    parts = urlsplit(value.strip())
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise AddressError(f"--public-url {value!r} is not a URL: {fix}")
    if parts.scheme == "http" and serves_tls:
        raise AddressError(
            f"--public-url {value!r} is http:// but this Cloud serves HTTPS: use https://"
        )
    if parts.username is not None or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise AddressError(
            f"--public-url {value!r} must not hold a user, a path or a query "
            f"(nodes append /api/... and /aclk to it): {fix}"
        )
    try:
        port = parts.port
    except ValueError as exc:
        raise AddressError(f"--public-url {value!r} has an invalid port ({exc}): {fix}") from None
    host = check_name(parts.hostname or "", "the host of --public-url")
    shown = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{shown}" + (f":{port}" if port else "")


def url_host(url: str) -> str:
    """The host of a URL, normalized as `check_name` does ('' when it has none)."""
    host = urlsplit(url).hostname or ""
    try:
        return check_name(host)
    except AddressError:
        return host


def is_loopback(host: str) -> bool:
    """True for names that mean "this machine" wherever they are used."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load(data_dir: Path) -> PublicAddress:
    path = data_dir / FILE_NAME
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return PublicAddress()
    except (OSError, ValueError) as exc:
        raise AddressError(
            f"cannot read {path} ({exc}): fix or delete it and give --public-url again"
        ) from None
    url = raw.get("public_url") if isinstance(raw, dict) else None
    sans = raw.get("sans", []) if isinstance(raw, dict) else []
    if (url is not None and not isinstance(url, str)) or not isinstance(sans, list):
        raise AddressError(f"{path} is not what tether-cloud wrote: delete it and start again")
    return PublicAddress(url, tuple(check_name(str(s)) for s in sans))


def save(data_dir: Path, address: PublicAddress) -> None:
    body = {"public_url": address.url, "sans": list(address.sans)}
    write_atomic(data_dir / FILE_NAME, json.dumps(body, indent=2) + "\n")


def resolve(
    data_dir: Path,
    public_url: str | None,
    sans: Sequence[str] | None,
    *,
    serves_tls: bool,
    persist: bool,
) -> PublicAddress:
    """What the flags say, else what was kept; kept again when `persist` and changed."""
    kept = load(data_dir)
    url = kept.url
    if public_url is not None:
        url = None if public_url.strip() == AUTO else public_url
    if url is not None:
        # A kept URL is checked again: an http:// one kept from an
        # --insecure-http run is refused once the Cloud serves TLS.
        url = parse_public_url(url, serves_tls=serves_tls)
    names = kept.sans
    if sans:
        wanted = [s for s in sans if s.strip() != AUTO]
        names = tuple(dict.fromkeys(check_name(s) for s in wanted))
    chosen = PublicAddress(url, names)
    if persist and chosen != kept:
        save(data_dir, chosen)
    return chosen


def machine_addresses() -> list[str]:
    """This machine's addresses other machines may use: no loopback, no link-local."""
    out: list[str] = []
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            try:
                ip = ipaddress.ip_address(entry.address.split("%", 1)[0])
            except ValueError:
                continue
            if not (ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast):
                out.append(str(ip))
    return sorted(set(out), key=lambda a: (":" in a, a))


def certificate_names(
    address: PublicAddress, listen_host: str, addresses: Iterable[str] | None = None
) -> list[str]:
    """The names the Cloud's generated server certificate must hold, in order
    (the first is also its common name): the public URL's host, this machine's
    hostname and local names, --san, the address it listens on and, with no
    public URL, every address of this machine (`addresses`, default
    `machine_addresses()`)."""
    names: list[str] = [url_host(address.url)] if address.url else []
    try:
        names.append(check_name(socket.gethostname()))
    except AddressError:
        pass  # a hostname no DNS name can match; nodes use an address then
    names += LOCAL_NAMES
    names += address.sans
    if listen_host not in ("", "::", "0.0.0.0"):
        names.append(check_name(listen_host, "--host"))
    if not address.url:
        names += machine_addresses() if addresses is None else list(addresses)
    return list(dict.fromkeys(names))


def name_matches(host: str, names: Sequence[str]) -> bool:
    """Whether a certificate valid for `names` is valid for `host` (RFC 6125:
    exact, or a wildcard standing for the leftmost label of a DNS name)."""
    try:
        host = check_name(host)
    except AddressError:
        return False
    for name in names:
        if name == host:
            return True
        if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]:
            return True
    return False


def warnings(url: str, cert_names: Sequence[str] | None, *, on_page: bool) -> list[str]:
    """What is wrong with handing `url` to nodes: a loopback host works on this
    machine only; a host the certificate (`cert_names`, None: plain HTTP) is
    not valid for is refused by every node that verifies it."""
    host = url_host(url)
    port = urlsplit(url).port
    other = f"https://NAME{f':{port}' if port else ''}"
    if is_loopback(host):
        known = [n for n in cert_names or () if not is_loopback(n) and not n.startswith("*")]
        held = f" (its certificate already holds {', '.join(known)})" if known else ""
        how = (
            "open this page through an address they reach, or start the Cloud with "
            f"--public-url {other}"
            if on_page
            else f"start the Cloud with --public-url {other}"
        )
        return [
            f"{url} only works on this machine: {host} is its loopback address. For nodes "
            f"on other machines, {how}, NAME being how they reach this machine{held}."
        ]
    if cert_names is not None and not name_matches(host, cert_names):
        return [
            f"Nodes will refuse this Cloud's certificate at {host}: it is valid for "
            f"{', '.join(cert_names)} only. Start the Cloud with --san {host} (or "
            f"--public-url {url}) and it is issued again for that name."
        ]
    return []


def url_for_page(public_url: str | None, scheme: str, host_header: str, fallback: str) -> str:
    """The Cloud URL a page puts in its commands: the public URL when there is
    one, else the address the browser used (a well-formed Host header), which
    reached this Cloud from at least that machine."""
    if public_url:
        return public_url
    if _HOST_HEADER.match(host_header):
        return f"{scheme}://{host_header.lower()}"
    return fallback
