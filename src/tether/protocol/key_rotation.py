"""Key rotation: a claimed node replaces its RSA key without re-claiming.

    GET  /api/v1/auth/node/{claim_id}/challenge        (as for authentication)
    POST /api/v1/auth/node/{claim_id}/rotate-key
         {"response": "<base64 plaintext of the challenge>", "challengeId": "<its id>",
          "publicKey": "<PEM SubjectPublicKeyInfo of the NEW key>",
          "proof": "<base64 RSA-PSS signature by the NEW key over proof_message()>"}
         -> 200 {"publicKeySha256": "<hex SHA-256 of the new key's DER>",
                 "keyCreatedAt": "<ISO 8601 UTC>"}

The answer to the challenge proves the old key; the proof proves the new one
(so a node cannot register a key it does not hold). The Cloud swaps the key in
one transaction and forgets the node's outstanding challenges and link tokens:
from then on only the new key authenticates. No I/O here.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Final

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tether.protocol import auth

PROOF_CONTEXT: Final = b"tether rotate-key v1\n"
MAX_PUBLIC_KEY_PEM: Final = 4096
# RSA-PSS with SHA-256, MGF1-SHA-256 and a 32-byte salt: fixed, so any client
# can produce a proof the Cloud accepts.
_PSS: Final = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


def rotate_path(claim_id: str) -> str:
    return f"/api/v1/auth/node/{claim_id}/rotate-key"


class RotateRequest(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    response: str
    public_key: str
    proof: str
    challenge_id: Annotated[str, msgspec.Meta(max_length=auth.MAX_CHALLENGE_ID_LENGTH)] | None = (
        None
    )


class RotateReply(msgspec.Struct, rename="camel", kw_only=True):
    public_key_sha256: str
    key_created_at: str = ""


def proof_message(node_id: str, challenge_plaintext: bytes) -> bytes:
    """What the new key signs: the context, the node id (lowercase) and the
    plaintext of the challenge answered, so a proof is good for one rotation."""
    return PROOF_CONTEXT + node_id.lower().encode() + b"\n" + challenge_plaintext


def key_sha256(public_key_pem: bytes) -> str:
    """The key's fingerprint as the Cloud keeps it: SHA-256 of its DER."""
    der = auth.load_public_key(public_key_pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def sign_proof(private_key_pem: bytes, node_id: str, challenge_plaintext: bytes) -> bytes:
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise auth.AuthError("the new private key is not an RSA key")
    return key.sign(proof_message(node_id, challenge_plaintext), _PSS, hashes.SHA256())


def proof_valid(
    public_key_pem: bytes, node_id: str, challenge_plaintext: bytes, sig: bytes
) -> bool:
    """Whether `sig` is the new key's signature over this rotation. Raises
    AuthError when the key itself is unusable (not RSA >= 2048 PEM)."""
    key = auth.load_public_key(public_key_pem)
    try:
        key.verify(sig, proof_message(node_id, challenge_plaintext), _PSS, hashes.SHA256())
    except InvalidSignature:
        return False
    return True
