"""The PROXY protocol header (HAProxy's spec, versions 1 and 2), free of I/O.

A TCP balancer that does not terminate TLS (HAProxy with `send-proxy-v2`)
sends this header first on each connection it opens to a Cloud process, so
the process learns the real client's address: without it every claim, limit
and "connected from" sees the balancer's. The listener
(tether.cloud.proxy_listener) reads bytes off the socket and asks here:

- `begins_header(prefix)`: True when the first bytes are a PROXY header's,
  False when they cannot be (e.g. a TLS ClientHello, 0x16), None when too few
  bytes were read to say;
- `header_length(data)`: how many bytes the whole header takes, once enough
  was read to say (None: read more), so the listener reads exactly the header
  and leaves the TLS bytes after it on the socket;
- `parse(header)`: the `ProxyHeader`, or `ProxyHeaderError` saying what is
  wrong. Strict: a malformed header refuses the connection, never a guess.

A LOCAL command (v2) or `PROXY UNKNOWN` (v1) carries no address: health
checks of the balancer itself; the connection keeps the peer's address.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

V1_PREFIX = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107  # the spec's longest v1 line, CRLF included
V2_FIXED = 16
# TLVs (ALPN, authority, ...) may follow the addresses; HAProxy sends a few
# bytes of them at most. More is refused, so a peer cannot make us buffer much.
V2_MAX_PAYLOAD = 2048
# How many bytes `begins_header` needs to decide in every case.
DECIDE_BYTES = len(V2_SIGNATURE)

_V1_PORT = re.compile(rb"^(0|[1-9][0-9]{0,4})$")
_V2_ADDRESS_BYTES = {0x1: 12, 0x2: 36, 0x3: 216}  # INET, INET6, UNIX


class ProxyHeaderError(ValueError):
    """A PROXY header that is malformed or not allowed; the message says which."""


@dataclass(frozen=True)
class ProxyHeader:
    version: int  # 1 or 2
    source: tuple[str, int] | None  # the real client; None: LOCAL / UNKNOWN
    destination: tuple[str, int] | None  # where the client connected (the balancer)


def begins_header(prefix: bytes) -> bool | None:
    """Whether a connection whose first bytes are `prefix` starts with a PROXY header."""
    for signature in (V1_PREFIX, V2_SIGNATURE):
        n = min(len(prefix), len(signature))
        if prefix[:n] == signature[:n]:
            if len(prefix) >= len(signature):
                return True
            return None  # so far it could be this one
    return False


def header_length(data: bytes) -> int | None:
    """Bytes the header at the start of `data` takes; None while more is needed."""
    if data.startswith(V2_SIGNATURE):
        if len(data) < V2_FIXED:
            return None
        payload = int.from_bytes(data[14:16], "big")
        if payload > V2_MAX_PAYLOAD:
            raise ProxyHeaderError(
                f"PROXY v2 header announces {payload} bytes of addresses and TLVs; "
                f"at most {V2_MAX_PAYLOAD} are accepted"
            )
        return V2_FIXED + payload
    if data.startswith(V1_PREFIX):
        end = data.find(b"\r\n", 0, V1_MAX)
        if end >= 0:
            return end + 2
        if len(data) >= V1_MAX:
            raise ProxyHeaderError(f"PROXY v1 line longer than {V1_MAX} bytes")
        if b"\n" in data or b"\r" in data[:-1]:
            raise ProxyHeaderError("PROXY v1 line must end with CRLF")
        return None
    raise ProxyHeaderError("not a PROXY protocol header")


def parse(header: bytes) -> ProxyHeader:
    """The header, exactly `header_length` bytes of it."""
    if header.startswith(V2_SIGNATURE):
        return _parse_v2(header)
    if header.startswith(V1_PREFIX):
        return _parse_v1(header)
    raise ProxyHeaderError("not a PROXY protocol header")


def _parse_v1(line: bytes) -> ProxyHeader:
    if len(line) > V1_MAX or not line.endswith(b"\r\n") or b"\r\n" in line[:-2]:
        raise ProxyHeaderError("PROXY v1 header must be one line of at most 107 bytes")
    parts = line[:-2].split(b" ")
    if len(parts) >= 2 and parts[1] == b"UNKNOWN":
        return ProxyHeader(1, None, None)  # the rest of the line is to be ignored
    if len(parts) != 6 or parts[1] not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError(
            "PROXY v1 header must be 'PROXY TCP4|TCP6 SRC DST SPORT DPORT' or 'PROXY UNKNOWN'"
        )
    version = 4 if parts[1] == b"TCP4" else 6
    src = _v1_address(parts[2], version)
    dst = _v1_address(parts[3], version)
    return ProxyHeader(1, (src, _v1_port(parts[4])), (dst, _v1_port(parts[5])))


def _v1_address(raw: bytes, version: int) -> str:
    try:
        text = raw.decode("ascii")
        ip = ipaddress.ip_address(text)
    except (UnicodeDecodeError, ValueError):
        raise ProxyHeaderError(f"PROXY v1 address {raw[:45]!r} is not an IP address") from None
    if ip.version != version or (version == 6 and "%" in text):
        raise ProxyHeaderError(f"PROXY v1 address {text} is not an IPv{version} address")
    return str(ip)


def _v1_port(raw: bytes) -> int:
    if not _V1_PORT.match(raw) or int(raw) > 65535:
        raise ProxyHeaderError(f"PROXY v1 port {raw[:8]!r} is not 0-65535")
    return int(raw)


def _parse_v2(header: bytes) -> ProxyHeader:
    if len(header) < V2_FIXED:
        raise ProxyHeaderError("PROXY v2 header shorter than 16 bytes")
    version, command = header[12] >> 4, header[12] & 0x0F
    family, transport = header[13] >> 4, header[13] & 0x0F
    payload = header[V2_FIXED:]
    if version != 2:
        raise ProxyHeaderError(f"PROXY v2 header of version {version}, not 2")
    if len(payload) != int.from_bytes(header[14:16], "big"):
        raise ProxyHeaderError("PROXY v2 header length does not match its bytes")
    if command == 0x0:  # LOCAL: the balancer's own connection (health check)
        return ProxyHeader(2, None, None)
    if command != 0x1:
        raise ProxyHeaderError(f"PROXY v2 command {command} is neither LOCAL nor PROXY")
    if family == 0x0:  # UNSPEC: no address to take
        return ProxyHeader(2, None, None)
    needed = _V2_ADDRESS_BYTES.get(family)
    if needed is None:
        raise ProxyHeaderError(f"PROXY v2 address family {family} is unknown")
    if transport not in (0x1, 0x2):
        raise ProxyHeaderError(f"PROXY v2 transport {transport} is neither STREAM nor DGRAM")
    if len(payload) < needed:
        raise ProxyHeaderError(f"PROXY v2 addresses need {needed} bytes, got {len(payload)}")
    if family == 0x3:  # UNIX sockets: no IP address to show
        return ProxyHeader(2, None, None)
    size = 4 if family == 0x1 else 16
    src = str(ipaddress.ip_address(payload[:size]))
    dst = str(ipaddress.ip_address(payload[size : 2 * size]))
    ports = payload[2 * size : 2 * size + 4]
    sport, dport = int.from_bytes(ports[:2], "big"), int.from_bytes(ports[2:], "big")
    return ProxyHeader(2, (src, sport), (dst, dport))


def v1_header(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """A v1 header (for tests and tools that speak to a Cloud as a balancer)."""
    family = "TCP6" if ":" in source[0] else "TCP4"
    return f"PROXY {family} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n".encode()


def v2_header(source: tuple[str, int] | None, destination: tuple[str, int] | None) -> bytes:
    """A v2 header: PROXY over TCP with both addresses, or LOCAL when None."""
    if source is None or destination is None:
        return V2_SIGNATURE + bytes([0x20, 0x00]) + (0).to_bytes(2, "big")
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    family = 0x1 if src.version == 4 else 0x2
    body = (
        src.packed + dst.packed + source[1].to_bytes(2, "big") + destination[1].to_bytes(2, "big")
    )
    return V2_SIGNATURE + bytes([0x21, (family << 4) | 0x1]) + len(body).to_bytes(2, "big") + body
