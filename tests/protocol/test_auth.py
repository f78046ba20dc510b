"""Node auth crypto with a real RSA-2048 key, wire shapes and error classes."""

from __future__ import annotations

import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tether.protocol import auth


def _pem_pair(key: rsa.RSAPrivateKey) -> tuple[bytes, bytes]:
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


@pytest.fixture(scope="module")
def keys() -> tuple[bytes, bytes]:
    return _pem_pair(rsa.generate_private_key(public_exponent=65537, key_size=2048))


def test_challenge_roundtrip(keys: tuple[bytes, bytes]) -> None:
    private, public = keys
    challenge = auth.make_challenge()
    assert len(challenge) >= 32 and challenge != auth.make_challenge()
    ciphertext = auth.encrypt_challenge(public, challenge)
    assert challenge not in ciphertext and len(ciphertext) == 256
    # OAEP is randomised: the same challenge never encrypts the same way twice.
    assert ciphertext != auth.encrypt_challenge(public, challenge)
    answer = auth.decrypt_challenge(private, ciphertext)
    assert auth.responses_match(challenge, answer)


def test_other_nodes_key_cannot_answer(keys: tuple[bytes, bytes]) -> None:
    _, public = keys
    other_private, _ = _pem_pair(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    ciphertext = auth.encrypt_challenge(public, auth.make_challenge())
    with pytest.raises(auth.AuthError, match="different public key"):
        auth.decrypt_challenge(other_private, ciphertext)


def test_bad_keys_refused_with_reason() -> None:
    with pytest.raises(auth.AuthError, match="not a PEM public key"):
        auth.encrypt_challenge(b"hello", b"x")
    ec_public = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(auth.AuthError, match="must be RSA"):
        auth.encrypt_challenge(ec_public, b"x")
    with pytest.raises(auth.AuthError, match="cannot be read"):
        auth.decrypt_challenge(b"-----BEGIN RSA PRIVATE KEY-----\nxx\n", b"x")


def test_wire_shapes_use_the_documented_json_keys() -> None:
    reply = msgspec.json.decode(
        b'{"linkToken":"t","linkUrl":"wss://c:1/aclk","keepaliveSeconds":20,'
        b'"backoff":{"baseSeconds":1,"maxSeconds":300}}',
        type=auth.PasswordReply,
    )
    assert reply.link_token == "t" and reply.backoff.max_seconds == 300
    assert msgspec.json.encode(auth.ChallengeReply(challenge="YQ==", challenge_id="c1")) == (
        b'{"challenge":"YQ==","expiresIn":60,"challengeId":"c1"}'
    )
    # An older Cloud sends no challengeId; an older agent answers without one.
    old_cloud = msgspec.json.decode(b'{"challenge":"YQ==","expiresIn":9}', type=auth.ChallengeReply)
    assert old_cloud.challenge_id == ""
    assert msgspec.json.encode(auth.PasswordRequest(response="YQ==")) == b'{"response":"YQ=="}'
    assert msgspec.json.encode(auth.PasswordRequest(response="YQ==", challenge_id="c1")) == (
        b'{"response":"YQ==","challengeId":"c1"}'
    )
    with pytest.raises(msgspec.ValidationError, match="length"):
        msgspec.json.decode(
            b'{"response":"YQ==","challengeId":"' + b"x" * 65 + b'"}', type=auth.PasswordRequest
        )
    err = msgspec.json.decode(b'{"errorMsgKey":"ErrNodeNotFound"}', type=auth.ErrorReply)
    assert err.error_msg_key == "ErrNodeNotFound"
    assert auth.challenge_path("abc") == "/api/v1/auth/node/abc/challenge"
    assert auth.password_path("abc") == "/api/v1/auth/node/abc/password"


def test_base64_errors_are_auth_errors() -> None:
    assert auth.b64decode(auth.b64encode(b"\x00\xff")) == b"\x00\xff"
    with pytest.raises(auth.AuthError):
        auth.b64decode("not base64!!")


def test_link_tokens_hashed_and_compared() -> None:
    token = auth.make_link_token()
    stored = auth.hash_token(token)
    assert token not in stored
    assert auth.token_matches(token, stored)
    assert not auth.token_matches(auth.make_link_token(), stored)
    assert auth.bearer_token(f"Bearer {token}") == token
    assert auth.bearer_token("bearer  x ") == "x"
    assert auth.bearer_token("Basic abc") is None
    assert auth.bearer_token(None) is None
    assert auth.bearer_token("Bearer ") is None


@pytest.mark.parametrize(
    ("status", "key", "terminal"),
    [
        (404, "ErrNodeNotFound", True),
        (403, "ErrIncorrectResponse", True),
        (401, "ErrChallengeExpired", False),
        (429, "ErrRateLimited", False),
        (503, "ErrServiceUnavailable", False),
        (404, None, True),
        (500, None, False),
        (502, "ErrSomethingNew", False),
    ],
)
def test_error_classification(status: int, key: str | None, terminal: bool) -> None:
    kind = auth.classify_auth_error(status, key)
    assert kind.terminal is terminal
    assert kind.fix
    if terminal:
        assert "tether-claim" in kind.fix and "uuidgen" in kind.fix
