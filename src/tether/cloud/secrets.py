"""Bearer secrets (claiming tokens, API tokens, session ids) and passwords.

A token is `<kind>_<8-char public prefix>_<43 chars of base64url secret>`
(256 bits). Only its SHA-256 is stored; it is found by prefix and compared in
constant time. Logs may name the prefix, never the token.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import os
import secrets
import string
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.fernet import Fernet, InvalidToken

from tether.atomic import write_atomic

CLAIM_KIND = "tct"
API_KIND = "tat"
_PREFIX_ALPHABET = string.ascii_lowercase + string.digits
_hasher = PasswordHasher()


def new_token(kind: str) -> tuple[str, str]:
    """Return (token, prefix)."""
    prefix = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(8))
    return f"{kind}_{prefix}_{secrets.token_urlsafe(32)}", prefix


def token_prefix(token: str, kind: str) -> str | None:
    """The public prefix of a well-formed token of `kind`, else None."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != kind or len(parts[1]) != 8 or len(parts[2]) < 43:
        return None
    return parts[1]


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def same_hash(token: str, stored_hash: str) -> bool:
    return hmac.compare_digest(sha256_hex(token), stored_hash)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


@functools.cache
def dummy_password_hash() -> str:
    """Checked when the user does not exist, so a login takes as long either
    way. Made on first use: hashing costs about 0.1 s, paid by every process
    start (CLI commands included) when it was a module constant."""
    return hash_password(secrets.token_urlsafe(16))


def new_password() -> str:
    return secrets.token_urlsafe(15)


class SecretBox:
    """Encrypts values at rest with the Fernet key in `secret.key` (0600)."""

    def __init__(self, key_file: Path) -> None:
        if not key_file.exists():
            write_atomic(key_file, Fernet.generate_key(), mode=0o600)
        elif key_file.stat().st_mode & 0o077:
            os.chmod(key_file, 0o600)
        self._fernet = Fernet(key_file.read_bytes().strip())
        self.key_file = key_file

    def seal(self, value: str) -> str:
        return self._fernet.encrypt(value.encode()).decode()

    def open(self, sealed: str) -> str | None:
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken:
            return None


def aware(value: dt.datetime) -> dt.datetime:
    """SQLite hands back naive datetimes; everything here is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def iso(value: dt.datetime | None) -> str | None:
    return aware(value).isoformat() if value else None
