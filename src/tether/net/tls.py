"""TLS client settings shared by the claim command and the link.

Verification is always on: the system CAs, plus the Cloud's own chain in
`cloud.d/cloud_fullchain.pem` when the admin put one there (a self-hosted
Cloud usually has a private CA). `insecure` turns verification off; callers
must print INSECURE_WARNING when they do that.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from tether.paths import AgentPaths

INSECURE_WARNING = (
    "WARNING: -insecure: TLS certificate verification is OFF. Anyone between this node "
    "and the Cloud can read and change this connection. Put the Cloud's CA in "
    "cloud.d/cloud_fullchain.pem instead."
)


class TLSConfigError(Exception):
    """The fullchain file exists but cannot be used; the message names it."""


def fullchain_path(paths_or_fullchain: AgentPaths | Path | None) -> Path | None:
    if isinstance(paths_or_fullchain, AgentPaths):
        return paths_or_fullchain.cloud_fullchain_file
    return paths_or_fullchain


def client_ssl_context(
    paths_or_fullchain: AgentPaths | Path | None,
    insecure: bool = False,
    pinned: str | None = None,
) -> ssl.SSLContext:
    """`pinned` (`sha256:HEX` or HEX): trust ONLY `cloud_fullchain.pem`, and
    only when it holds the CA with that fingerprint (`-ca-fingerprint`)."""
    if insecure:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    fullchain = fullchain_path(paths_or_fullchain)
    if pinned:
        want = parse_fingerprint(pinned if ":" in pinned else f"sha256:{pinned}")
        if fullchain is None or not fullchain.exists():
            raise TLSConfigError(
                f"the Cloud's CA is pinned (sha256:{want}) but {fullchain} is missing: claim "
                "again with -ca-fingerprint= to fetch it"
            )
        if want not in pem_fingerprints(fullchain.read_bytes()):
            raise TLSConfigError(
                f"{fullchain} does not hold the pinned CA sha256:{want}: restore it or claim "
                "again with the Cloud's current -ca-fingerprint="
            )
        # No system CAs: a certificate from any other CA is refused.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    else:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    _trust(
        ctx,
        fullchain,
        "the Cloud certificate chain",
        "PEM certificates (-----BEGIN CERTIFICATE-----); fix or remove it.",
    )
    return ctx


def proxy_ssl_context(paths: AgentPaths | None) -> ssl.SSLContext:
    """TLS to an https:// proxy: the system CAs plus `cloud.d/proxy_ca.pem`
    (the proxy's own CA, saved there by `tether-claim -proxy-ca=FILE`)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca = paths.proxy_ca_file if paths is not None else None
    _trust(ctx, ca, "the proxy's CA", "PEM certificates; fix or remove it.")
    return ctx


def _trust(ctx: ssl.SSLContext, pem: Path | None, what: str, must_hold: str) -> None:
    """Add the CAs in `pem`, when it exists; TLSConfigError names it when it cannot be read."""
    if pem is None or not pem.exists():
        return
    try:
        ctx.load_verify_locations(cafile=str(pem))
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise TLSConfigError(f"cannot load {what} {pem}: {exc}. It must hold {must_hold}") from exc


def parse_fingerprint(value: str) -> str:
    """`sha256:HEX` (colons between bytes allowed, any case) as 64 lowercase
    hex digits; ValueError names the accepted form."""
    raw = value.strip()
    algo, sep, digits = raw.partition(":")
    if not sep or algo.lower() != "sha256":
        raise ValueError(
            f"CA fingerprint {raw!r} must be sha256:HEX (the quickstart and Connect Nodes print it)"
        )
    hexits = digits.replace(":", "").lower()
    if len(hexits) != 64 or any(c not in "0123456789abcdef" for c in hexits):
        raise ValueError(f"CA fingerprint {raw!r}: sha256 needs 64 hex digits")
    return hexits


def pem_fingerprints(pem: bytes) -> list[str]:
    """SHA-256 of each certificate (DER) in a PEM bundle, lowercase hex."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        return []
    return [c.fingerprint(hashes.SHA256()).hex() for c in certs]
