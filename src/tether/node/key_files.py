"""The node's key files in cloud.d, and a rotation's pending key beside them.

`private.pem` (PKCS#8, 0600) and `public.pem` are the key the Cloud holds. A
rotation (tether.agent.rotate_key) first writes the new pair as
`private.pem.next` / `public.pem.next` (atomically, 0600 from the first byte),
then registers it with the Cloud, then `promote`s it over the old pair. Until
the Cloud confirms, the old key stays in place, so a crash at any point leaves
a key the Cloud holds: before the Cloud swapped, `private.pem`; after it, the
pending key, which the next authentication finds (the Cloud's challenge only
decrypts with the key it holds) and promotes.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tether.atomic import write_atomic
from tether.paths import AgentPaths

KEY_BITS = 2048
PENDING_SUFFIX = ".next"


def generate_pair() -> tuple[bytes, bytes]:
    """A new RSA-2048 pair: (PKCS#8 private PEM, SubjectPublicKeyInfo PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def pending_private(paths: AgentPaths) -> Path:
    return paths.private_key_file.with_name(paths.private_key_file.name + PENDING_SUFFIX)


def pending_public(paths: AgentPaths) -> Path:
    return paths.public_key_file.with_name(paths.public_key_file.name + PENDING_SUFFIX)


def write_pending(paths: AgentPaths, private_pem: bytes, public_pem: bytes) -> None:
    write_atomic(pending_private(paths), private_pem, mode=0o600)
    write_atomic(pending_public(paths), public_pem, mode=0o644)


def read_pending(paths: AgentPaths) -> bytes | None:
    try:
        return pending_private(paths).read_bytes()
    except OSError:
        return None


def promote(paths: AgentPaths) -> None:
    """The Cloud holds the pending key: make it the node's key (each rename
    atomic; private first, so a crash between leaves the key the Cloud holds)."""
    private = pending_private(paths)
    public = pending_public(paths)
    if not private.exists():
        return  # promoted already (an authentication found it first)
    os.replace(private, paths.private_key_file)
    if public.exists():
        os.replace(public, paths.public_key_file)
    dir_fd = os.open(paths.cloud_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def drop_pending(paths: AgentPaths) -> None:
    """The Cloud refused the pending key: forget it."""
    for f in (pending_private(paths), pending_public(paths)):
        with contextlib.suppress(FileNotFoundError):
            f.unlink()


def key_age_seconds(paths: AgentPaths, now: float) -> float | None:
    """Seconds since the node's key was written (claim or rotation), or None."""
    try:
        return max(0.0, now - paths.private_key_file.stat().st_mtime)
    except OSError:
        return None
