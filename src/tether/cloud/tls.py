"""The Cloud's private CA and server certificate (ECDSA P-256).

The CA is made once and never replaced here: agents trust it by copying
`ca.pem` to `cloud.d/cloud_fullchain.pem` (or by its SHA-256 fingerprint), so
changing it would cut every node off. The server certificate is re-issued from
that same CA whenever the names it must hold change (`--public-url`, `--san`,
this machine's addresses), its key does not match it, it was not issued by this
CA, or it expires within 30 days. Keys are written 0600; every file is written
atomically (key first, then certificate: a crash in between leaves a key that
does not match, which the next start notices and re-issues).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tether.atomic import write_atomic

RENEW_BEFORE = dt.timedelta(days=30)
SERVER_DAYS = 825
CA_DAYS = 3650


class TlsSetupError(Exception):
    """The CA or the server certificate cannot be made; the message says how to fix it."""


@dataclass(frozen=True)
class TlsFiles:
    ca_file: Path
    cert_file: Path
    key_file: Path
    created: bool  # the CA was made by this call
    reissued: str | None = None  # why the server certificate was (re)made, if it was
    names: tuple[str, ...] = ()  # the names the server certificate holds
    missing: tuple[str, ...] = ()  # wanted names it lacks (the CA key is not here)

    @property
    def ca_sha256(self) -> str:
        return cert_sha256(self.ca_file)


def cert_sha256(path: Path) -> str:
    """SHA-256 fingerprint of a PEM certificate, as colon-separated hex."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    digest = cert.fingerprint(hashes.SHA256()).hex().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def _normal(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        return name.lower().rstrip(".")


def cert_names(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses in a certificate's SAN extension."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    dns = [_normal(n) for n in san.get_values_for_type(x509.DNSName)]
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return dns + ips


def server_names(cert_file: Path) -> list[str]:
    """The names the server certificate at `cert_file` is valid for."""
    return cert_names(x509.load_pem_x509_certificate(cert_file.read_bytes()))


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise TlsSetupError(f"{path} is not an EC private key")
    return loaded


def _san_entries(names: Sequence[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in dict.fromkeys(_normal(n) for n in names if n):
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def _new_ca(now: dt.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tether"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Tether Cloud CA {socket.gethostname()}"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _server_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    names: Sequence[str],
    now: dt.datetime,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName(_san_entries(names)), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _reissue_reason(
    cert_file: Path, key_file: Path, ca_cert: x509.Certificate, wanted: set[str], now: dt.datetime
) -> tuple[str | None, list[str]]:
    """(why the server certificate must be made again or None, the names it holds)."""
    if not (cert_file.exists() and key_file.exists()):
        return "there was none", []
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        key = _load_key(key_file)
    except (ValueError, TlsSetupError):
        return "the certificate or its key could not be read", []
    held = cert_names(cert)
    if cert.public_key() != key.public_key():
        return "its key does not match it", held
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return "it was not issued by this CA", held
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        return f"it expires on {cert.not_valid_after_utc:%Y-%m-%d}", held
    if set(held) != wanted:
        added = sorted(wanted - set(held))
        removed = sorted(set(held) - wanted)
        change = "; ".join(
            part
            for part in (
                f"adds {', '.join(added)}" if added else "",
                f"drops {', '.join(removed)}" if removed else "",
            )
            if part
        )
        return f"its names changed ({change})", held
    return None, held


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    """One process at a time: Cloud processes sharing a data dir must not
    interleave a key of one with the certificate of another."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / ".tls.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_tls(data_dir: Path, names: Sequence[str]) -> TlsFiles:
    """The CA (made once) and a server certificate from it for exactly `names`."""
    if not names:
        raise ValueError("a server certificate needs at least one name")
    with _locked(data_dir):
        return _ensure(data_dir, names)


def _ensure(data_dir: Path, names: Sequence[str]) -> TlsFiles:
    ca_file = data_dir / "ca.pem"
    ca_key_file = data_dir / "ca-key.pem"
    cert_file = data_dir / "server.pem"
    key_file = data_dir / "server-key.pem"
    now = dt.datetime.now(dt.UTC)
    created = False
    ca_key: ec.EllipticCurvePrivateKey | None = None
    if ca_file.exists():
        try:
            ca_cert = x509.load_pem_x509_certificate(ca_file.read_bytes())
        except ValueError as exc:
            raise TlsSetupError(f"{ca_file} is not a PEM certificate ({exc})") from None
        if ca_key_file.exists():
            ca_key = _load_key(ca_key_file)
            if ca_key.public_key() != ca_cert.public_key():
                raise TlsSetupError(
                    f"{ca_key_file} is not the key of {ca_file}: put the CA's own key back"
                )
    else:
        ca_key, ca_cert = _new_ca(now)
        write_atomic(ca_key_file, _key_pem(ca_key), mode=0o600)
        write_atomic(ca_file, ca_cert.public_bytes(serialization.Encoding.PEM))
        created = True

    wanted = [_normal(n) for n in dict.fromkeys(names)]
    reason, held = _reissue_reason(cert_file, key_file, ca_cert, set(wanted), now)
    if reason is None:
        return TlsFiles(ca_file, cert_file, key_file, created, None, tuple(held))
    if ca_key is None:
        usable = held and reason.startswith(("its names", "it expires"))
        if not usable:
            raise TlsSetupError(
                f"the server certificate must be made again ({reason}) but the CA's key "
                f"{ca_key_file} is not here: put it back for this start (the CA and its "
                "fingerprint stay the same), or serve your own with --cert/--key"
            )
        missing = tuple(n for n in wanted if n not in held)
        return TlsFiles(ca_file, cert_file, key_file, created, None, tuple(held), missing)
    key, cert = _server_cert(ca_key, ca_cert, wanted, now)
    write_atomic(key_file, _key_pem(key), mode=0o600)
    write_atomic(cert_file, cert.public_bytes(serialization.Encoding.PEM))
    return TlsFiles(ca_file, cert_file, key_file, created, reason, tuple(wanted))
