"""The node's RSA-2048 identity key in cloud.d.

`private.pem` (PKCS#8, mode 0600 from its first byte) and `public.pem`
(SubjectPublicKeyInfo). A key is reused on later claims of the same identity,
so claiming again is harmless; a new identity (`-id=`) gets a new key.
`tether-cli rotate-key` replaces the key without a claim (tether.node.key_files).
A node that lost its key claims again: with its old id the Cloud refuses the new
key (ErrAlreadyClaimed), so it claims as a new node with -id=$(uuidgen).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tether.atomic import write_atomic
from tether.node import key_files

KEY_BITS = key_files.KEY_BITS


class KeyFileError(Exception):
    """private.pem exists but is unusable; the message names the file and the fix."""


@dataclass
class KeyPair:
    private_pem: bytes
    public_pem: bytes
    created: bool  # generated now (not read from disk)


def generate() -> KeyPair:
    private, public = key_files.generate_pair()  # the same keys a rotation makes
    return KeyPair(private, public, created=True)


def load(private_file: Path) -> KeyPair | None:
    """The stored key, or None when there is none."""
    try:
        private = private_file.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KeyFileError(f"cannot read {private_file}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(private, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(
            f"{private_file} is not a usable private key ({exc}). Remove cloud.d and "
            "claim again to make a new identity."
        ) from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyFileError(f"{private_file} is not an RSA key: remove cloud.d and claim again.")
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return KeyPair(private, public, created=False)


def save(pair: KeyPair, private_file: Path, public_file: Path) -> None:
    write_atomic(private_file, pair.private_pem, mode=0o600)
    write_atomic(public_file, pair.public_pem, mode=0o644)
