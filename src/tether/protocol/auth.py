"""Node authentication: the challenge/answer exchange, its wire shapes and crypto.

The agent proves it holds the private key it registered when claimed:

    GET  /api/v1/auth/node/{claim_id}/challenge
         -> 200 {"challenge": "<base64 RSA-OAEP-SHA256 ciphertext>", "expiresIn": 50,
                 "challengeId": "<opaque id>"}
    POST /api/v1/auth/node/{claim_id}/password
         {"response": "<base64 plaintext>", "challengeId": "<the id it answers>"}
         -> 200 {"linkToken": "...", "linkUrl": "wss://HOST:PORT/aclk",
                 "keepaliveSeconds": 20, "backoff": {"baseSeconds": 1, "maxSeconds": 300}}

Naming the challenge lets the Cloud tell a wrong key (a live challenge answered
with the wrong plaintext: 403, terminal) from an answer to a challenge it no
longer holds (expired, used, or forgotten by a restart: 401, ask again).
`challengeId` is optional for older agents; without it an answer that matches
no live challenge is 401, since the Cloud cannot tell the two apart.

Failures answer with a JSON body `{"errorMsgKey": KEY, "errorMessage": TEXT}`.
The WebSocket then presents the link token as `Authorization: Bearer TOKEN`.
No I/O here: the HTTP client and server sit at the edges. The Cloud's limits
live in tether.cloud.node_auth.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated, Final

import msgspec
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

CHALLENGE_BYTES: Final = 32
CHALLENGE_TTL_SECONDS: Final = 60
MAX_CHALLENGE_ID_LENGTH: Final = 64
LINK_PATH: Final = "/aclk"


def challenge_path(claim_id: str) -> str:
    return f"/api/v1/auth/node/{claim_id}/challenge"


def password_path(claim_id: str) -> str:
    return f"/api/v1/auth/node/{claim_id}/password"


class AuthError(Exception):
    """The key material or an auth message is unusable."""


# -- wire shapes ----------------------------------------------------------------


class ChallengeReply(msgspec.Struct, rename="camel", kw_only=True):
    challenge: str
    expires_in: int = CHALLENGE_TTL_SECONDS
    # Names this challenge in the answer; "" from a Cloud that predates it.
    challenge_id: str = ""


class PasswordRequest(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    response: str
    # The challengeId of the challenge answered; None (absent) from older agents.
    challenge_id: Annotated[str, msgspec.Meta(max_length=MAX_CHALLENGE_ID_LENGTH)] | None = None


class BackoffPolicy(msgspec.Struct, rename="camel", kw_only=True):
    base_seconds: float = 1.0
    max_seconds: float = 300.0


class PasswordReply(msgspec.Struct, rename="camel", kw_only=True):
    link_token: str
    link_url: str
    keepalive_seconds: float = 20.0
    backoff: BackoffPolicy = msgspec.field(default_factory=BackoffPolicy)


class ErrorReply(msgspec.Struct, rename="camel", kw_only=True):
    error_msg_key: str
    error_message: str = ""


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise AuthError(f"not valid base64: {exc}") from None


# -- crypto -----------------------------------------------------------------------

_OAEP: Final = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
)


def make_challenge() -> bytes:
    return secrets.token_bytes(CHALLENGE_BYTES)


def load_public_key(public_key_pem: bytes) -> rsa.RSAPublicKey:
    try:
        key = serialization.load_pem_public_key(public_key_pem)
    except ValueError as exc:
        raise AuthError(f"the node's public key is not a PEM public key: {exc}") from None
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < 2048:
        raise AuthError("the node's public key must be RSA with at least 2048 bits")
    return key


def encrypt_challenge(public_key_pem: bytes, challenge: bytes) -> bytes:
    return load_public_key(public_key_pem).encrypt(challenge, _OAEP)


def decrypt_challenge(private_key_pem: bytes, ciphertext: bytes) -> bytes:
    try:
        # The node's own key (written 0600 by tether-claim), not untrusted input:
        # skipping the RSA consistency check saves ~50 ms on every connect.
        key = serialization.load_pem_private_key(
            private_key_pem, password=None, unsafe_skip_rsa_key_validation=True
        )
    except (ValueError, TypeError) as exc:
        raise AuthError(f"the node's private key cannot be read: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise AuthError("the node's private key is not an RSA key")
    try:
        return key.decrypt(ciphertext, _OAEP)
    except ValueError:
        raise AuthError(
            "the challenge cannot be decrypted with this node's private key "
            "(the Cloud holds a different public key for this node)"
        ) from None


def responses_match(expected: bytes, answered: bytes) -> bool:
    return hmac.compare_digest(expected, answered)


# -- link tokens (Cloud side keeps only the hash) ---------------------------------


def make_link_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_token(token), stored_hash)


def bearer_token(authorization_header: str | None) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header, or None."""
    if not authorization_header:
        return None
    scheme, _, token = authorization_header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


# -- resume tokens (docs/protocol.md, resume) ----------------------------------------

# Offered by the agent in Hello.capabilities; the Cloud hands out resume tokens
# only to agents that offer it.
RESUME_CAPABILITY: Final = "resume"
# On the /aclk upgrade, instead of Authorization: "<claim id> <resume token>".
RESUME_HEADER: Final = "Tether-Resume"
MAX_RESUME_HEADER_LENGTH: Final = 200


def resume_header(claim_id: str, token: str) -> str:
    return f"{claim_id} {token}"


def parse_resume_header(value: str | None) -> tuple[str, str] | None:
    """(claim id, token) of a `Tether-Resume` header, None if absent or malformed."""
    if not value or len(value) > MAX_RESUME_HEADER_LENGTH:
        return None
    claim_id, _, token = value.strip().partition(" ")
    token = token.strip()
    if not claim_id or not token or " " in token:
        return None
    return claim_id.lower(), token


# -- errors -------------------------------------------------------------------------


@dataclass(frozen=True)
class AuthErrorKind:
    key: str
    status: int
    terminal: bool
    meaning: str
    fix: str


REMOVED_FIX: Final = (
    "re-claim this node: tether-claim -token=TOKEN -rooms=ROOMS -url=URL -id=$(uuidgen)"
)

AUTH_ERRORS: Final[dict[str, AuthErrorKind]] = {
    k.key: k
    for k in (
        AuthErrorKind(
            "ErrNodeNotFound",
            404,
            True,
            "the Cloud does not know this node (never claimed there, or removed)",
            REMOVED_FIX,
        ),
        AuthErrorKind(
            "ErrIncorrectResponse",
            403,
            True,
            "the answer to a live challenge is wrong: the node's private key does not "
            "match the key the Cloud holds for it",
            "the key in cloud.d was replaced or copied from another node; " + REMOVED_FIX,
        ),
        AuthErrorKind(
            "ErrChallengeExpired",
            401,
            False,
            "the challenge expired, was already answered, or is not known to the Cloud "
            "(for example after a Cloud restart)",
            "none needed: the agent asks for a new challenge",
        ),
        AuthErrorKind(
            "ErrRateLimited",
            429,
            False,
            "too many authentication requests or failures from this address, or too many "
            "challenges outstanding for this node",
            "none needed: the agent waits as the Cloud asks (Retry-After)",
        ),
        AuthErrorKind(
            "ErrServiceUnavailable",
            503,
            False,
            "the Cloud is unavailable",
            "none needed: the agent retries with backoff",
        ),
    )
}


def classify_auth_error(status: int, error_msg_key: str | None) -> AuthErrorKind:
    """What a failed auth answer means; unknown answers are transient."""
    if error_msg_key and error_msg_key in AUTH_ERRORS:
        return AUTH_ERRORS[error_msg_key]
    for kind in AUTH_ERRORS.values():
        if kind.status == status and status in (404, 403):
            return kind
    return AuthErrorKind(
        error_msg_key or f"HTTP{status}",
        status,
        False,
        f"the Cloud answered HTTP {status}",
        "none needed if temporary: the agent retries with backoff",
    )
