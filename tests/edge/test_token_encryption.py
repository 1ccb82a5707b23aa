"""Encrypted tokens (JWE around the signed JWT); end to end in tests/e2e/test_shaping.py."""

from __future__ import annotations

import base64
import secrets

import msgspec
import pytest

from busgate.contracts import errors
from busgate.contracts.config import ConfigError, Token
from busgate.edge.tokens import TokenService

SECRET = secrets.token_urlsafe(48)


def b64key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def service(key: str | None = None, **config) -> TokenService:
    if key is not None:
        config = {"encryption": "A256GCM", "encryption_key": key, **config}
    return TokenService("main", msgspec.convert({"secret": SECRET, **config}, Token))


def readable(token: str) -> bytes:
    """Everything a client can decode from the token's parts."""
    out = b""
    for part in token.split("."):
        try:
            out += base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        except ValueError:
            continue
    return out


async def test_an_encrypted_token_is_accepted_and_its_claims_are_not_readable():
    svc = service(b64key())
    token = svc.access("u:ann", {"name": "ann-the-user", "roles": ["user"]}, "s-1")
    assert token.count(".") == 4
    seen = readable(token)
    assert b'"alg":"dir"' in seen and b'"enc":"A256GCM"' in seen  # the header is public
    assert b"ann-the-user" not in seen and b"u:ann" not in seen and b"s-1" not in seen
    identity = await svc.verify(token)
    assert (identity.subject, identity.claims["name"]) == ("u:ann", "ann-the-user")
    assert svc.verify_refresh(svc.refresh("u:ann", "s-1", "r-1", 2e9))["rti"] == "r-1"
    plain = service().access("u:ann", {"name": "ann-the-user"}, "s-1")
    assert b"ann-the-user" in readable(plain)  # what encryption hides


async def test_a_token_for_another_key_or_tampered_with_is_refused():
    token = service(b64key()).access("u:ann", {}, "s-1")
    with pytest.raises(errors.Unauthorized, match="cannot be decrypted"):
        await service(b64key()).verify(token)
    svc = service(b64key())
    good = svc.access("u:ann", {}, "s-1")
    head, key, iv, text, tag = good.split(".")
    flipped = text[:-2] + ("A" if text[-2] != "A" else "B") + text[-1]
    with pytest.raises(errors.Unauthorized):
        await svc.verify(".".join((head, key, iv, flipped, tag)))


async def test_signed_tokens_from_before_encryption_stay_valid():
    key = b64key()
    before = service().access("u:ann", {}, "s-1")
    assert (await service(key).verify(before)).subject == "u:ann"


def test_the_key_must_be_32_bytes():
    with pytest.raises(ConfigError, match=r"tokens\.main\.encryption_key"):
        service(base64.urlsafe_b64encode(b"short").decode())
    with pytest.raises(msgspec.ValidationError, match="encryption_key"):
        msgspec.convert({"secret": SECRET, "encryption": "A256GCM"}, Token)
