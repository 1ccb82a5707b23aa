"""Encrypted tokens (``tokens.NAME.encryption = "A256GCM"``): the signed JWT travels inside
a compact JWE (``alg = dir``, ``enc = A256GCM``, ``cty = JWT``), so a client holds a token
whose claims it cannot read; verification decrypts first, then checks the signature as for
any token. The JOSE work is joserfc's (pyjwt has no JWE); nothing here is hand-made crypto.

The key is 32 random bytes, base64url-encoded, given as ``encryption_key`` (``env:NAME`` or
``file:PATH``). Tokens issued before encryption was switched on (plain JWS) are still taken
until they expire, so switching it on logs nobody out.
"""

from __future__ import annotations

import base64
import binascii

from joserfc import jwe
from joserfc.errors import JoseError
from joserfc.jwk import OctKey

from busgate.contracts import errors
from busgate.contracts.config import ConfigError, Token
from busgate.contracts.secrets import resolve_secret

_ALGORITHMS = ("dir", "A256GCM")


def is_encrypted(token: str) -> bool:
    """A compact JWE has five parts, a JWS three."""
    return token.count(".") == 4


class TokenEncryption:
    def __init__(self, name: str, config: Token, kid: str) -> None:
        where = f"tokens.{name}.encryption_key"
        text = resolve_secret(config.encryption_key, where)
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise ConfigError(f"{where}: expected 32 bytes, base64url-encoded") from None
        if len(raw) != 32:
            raise ConfigError(f"{where}: expected 32 bytes (base64url), got {len(raw)}")
        self._key = OctKey.import_key(raw)
        self._header = {"alg": "dir", "enc": config.encryption, "kid": kid, "cty": "JWT"}

    def wrap(self, signed: str) -> str:
        return jwe.encrypt_compact(self._header, signed, self._key, algorithms=_ALGORITHMS)

    def unwrap(self, token: str) -> str:
        """The signed JWT inside ``token``; Unauthorized when it does not decrypt."""
        try:
            found = jwe.decrypt_compact(token, self._key, algorithms=_ALGORITHMS)
        except (JoseError, ValueError):
            raise errors.Unauthorized("the token cannot be decrypted") from None
        plaintext = found.plaintext
        if plaintext is None:
            raise errors.Unauthorized("the token cannot be decrypted")
        try:
            return plaintext.decode("ascii")
        except UnicodeDecodeError:
            raise errors.Unauthorized("the token is malformed") from None
