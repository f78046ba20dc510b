"""CA pinning on first use (`tether-claim -ca-fingerprint=sha256:HEX`).

A private-CA Cloud serves its CA at `/ca.pem`. It is fetched WITHOUT
verification (nothing secret is sent), and trusted only when its SHA-256
matches the fingerprint the admin gave out of band; then it is saved to
`cloud.d/cloud_fullchain.pem`, and every later connection trusts only it.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx

from tether.atomic import write_atomic
from tether.net.diagnose import describe_connect_error
from tether.net.proxy import ProxyChoice
from tether.net.tls import pem_fingerprints

MAX_CA_BYTES = 64 * 1024


class PinError(Exception):
    """The pinned CA could not be fetched or does not match; says which and why."""


def ensure_pinned_ca(
    url: str,
    pin: str,
    fullchain: Path,
    proxy: ProxyChoice,
    proxy_ssl: ssl.SSLContext | None = None,
    timeout: float = 15.0,
) -> bool:
    """Make `fullchain` hold the CA whose SHA-256 is `pin` (hex). True when it
    was fetched now, False when it was there already."""
    if fullchain.exists() and pin in pem_fingerprints(fullchain.read_bytes()):
        return False
    cert = matching_cert(fetch_ca(url, proxy, proxy_ssl, timeout), pin, url)
    write_atomic(fullchain, cert, mode=0o644)
    return True


def fetch_ca(
    url: str, proxy: ProxyChoice, proxy_ssl: ssl.SSLContext | None = None, timeout: float = 15.0
) -> bytes:
    """`URL/ca.pem`, fetched without verification: trust it only by fingerprint."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # checked by fingerprint, before any trust
    where = f"{url.rstrip('/')}/ca.pem"
    try:
        with httpx.Client(
            verify=ctx, proxy=proxy.for_httpx(proxy_ssl), trust_env=False, timeout=timeout
        ) as client:
            resp = client.get(where)
    except httpx.HTTPError as exc:
        raise PinError(
            f"cannot fetch the Cloud's CA from {where}: {describe_connect_error(exc, url, proxy)}"
        ) from exc
    if resp.status_code != 200 or len(resp.content) > MAX_CA_BYTES:
        raise PinError(
            f"the Cloud did not serve its CA at {where} (HTTP {resp.status_code}): a Cloud "
            "with a public certificate needs no -ca-fingerprint"
        )
    return resp.content


def matching_cert(pem: bytes, pin: str, url: str) -> bytes:
    """The one certificate of `pem` whose SHA-256 is `pin`, as PEM: nothing
    else in the answer is trusted. PinError when none matches."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        certs = []
    for cert in certs:
        if cert.fingerprint(hashes.SHA256()).hex() == pin:
            return cert.public_bytes(serialization.Encoding.PEM)
    got = ", ".join(f"sha256:{c.fingerprint(hashes.SHA256()).hex()}" for c in certs)
    raise PinError(
        f"the CA served at {url.rstrip('/')}/ca.pem does not match the pinned "
        f"sha256:{pin} (it is {got or 'no certificate'}). Do not claim: someone may be "
        "between this node and the Cloud, or the fingerprint is wrong; check it with the "
        "Cloud's admin."
    )
