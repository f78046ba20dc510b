"""The Cloud's private CA and server certificate (ECDSA P-256), made once.

Agents trust the CA by copying `ca.pem` to `cloud.d/cloud_fullchain.pem`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tether.atomic import write_atomic


@dataclass(frozen=True)
class TlsFiles:
    ca_file: Path
    cert_file: Path
    key_file: Path
    created: bool

    @property
    def ca_sha256(self) -> str:
        return cert_sha256(self.ca_file)


def cert_sha256(path: Path) -> str:
    """SHA-256 fingerprint of a PEM certificate, as colon-separated hex."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    digest = cert.fingerprint(hashes.SHA256()).hex().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _san_entries(extra: list[str]) -> list[x509.GeneralName]:
    names = ["localhost", "127.0.0.1", "::1", socket.gethostname(), *extra]
    out: list[x509.GeneralName] = []
    seen: set[str] = set()
    for name in names:
        if not name or name in seen:
            continue
        seen.add(name)
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def ensure_tls(data_dir: Path, extra_sans: list[str] | None = None) -> TlsFiles:
    """Create the CA and server certificate in `data_dir` unless they exist."""
    ca_file = data_dir / "ca.pem"
    ca_key_file = data_dir / "ca-key.pem"
    cert_file = data_dir / "server.pem"
    key_file = data_dir / "server-key.pem"
    if ca_file.exists() and cert_file.exists() and key_file.exists():
        return TlsFiles(ca_file, cert_file, key_file, created=False)

    now = dt.datetime.now(dt.UTC)
    if ca_file.exists() and ca_key_file.exists():
        ca_cert = x509.load_pem_x509_certificate(ca_file.read_bytes())
        loaded = serialization.load_pem_private_key(ca_key_file.read_bytes(), password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        ca_key = loaded
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tether"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"Tether Cloud CA {socket.gethostname()}"),
            ]
        )
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=3650))
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
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
            .sign(ca_key, hashes.SHA256())
        )
        write_atomic(ca_key_file, _key_pem(ca_key), mode=0o600)
        write_atomic(ca_file, ca_cert.public_bytes(serialization.Encoding.PEM))

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, socket.gethostname())]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(_san_entries(extra_sans or [])), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    write_atomic(key_file, _key_pem(key), mode=0o600)
    write_atomic(cert_file, cert.public_bytes(serialization.Encoding.PEM))
    return TlsFiles(ca_file, cert_file, key_file, created=True)
