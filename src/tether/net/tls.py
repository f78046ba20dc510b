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
    paths_or_fullchain: AgentPaths | Path | None, insecure: bool = False
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    fullchain = fullchain_path(paths_or_fullchain)
    if fullchain is not None and fullchain.exists():
        try:
            ctx.load_verify_locations(cafile=str(fullchain))
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise TLSConfigError(
                f"cannot load the Cloud certificate chain {fullchain}: {exc}. It must hold "
                "PEM certificates (-----BEGIN CERTIFICATE-----); fix or remove it."
            ) from exc
    return ctx
