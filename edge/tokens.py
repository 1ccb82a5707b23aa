"""Issuing and checking tokens (JWT, pyjwt with an explicit algorithm list).

Access tokens are self-contained; what makes one stop working before it expires is its
session being revoked, which the caller checks in the local session copy (a dict lookup).
Verified tokens are kept in a small cache (token → identity, expiry), so the hot path of a
repeated bearer token costs a dict lookup and a clock read rather than a signature check.

Tokens of an external identity provider (``verifiable``) are checked against its JWKS,
fetched with aiohttp, cached, and fetched again when a token names an unknown ``kid``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives import serialization

from busgate.contracts import errors
from busgate.contracts.config import (
    ASYMMETRIC,
    RESERVED_CLAIMS,
    Claim,
    ConfigError,
    Token,
    Verifiable,
)
from busgate.contracts.secrets import resolve_secret
from busgate.contracts.wire import Identity, Origin
from busgate.edge.headers import is_text
from busgate.edge.token_encryption import TokenEncryption, is_encrypted

log = logging.getLogger("busgate.edge.tokens")

MIN_SECRET = 32
"""Bytes an HMAC secret needs at least (RFC 7518 §3.2 asks for the hash's size)."""
CACHE_SIZE = 10_000
_IDENTITY_SKIP = RESERVED_CLAIMS | {"sub", "roles"}


def api_key_hash(key: str) -> str:
    """How an API key is stored in config: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _path(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


_PRIMITIVES = (str, int, float, bool)


def _coerce(claim: Claim, value: Any) -> Any:
    if value is None:
        return None
    if claim.type == "list":
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(i, _PRIMITIVES) for i in items):
            raise ValueError("only arrays of primitives")
        return items
    if not isinstance(value, _PRIMITIVES):
        raise ValueError("only primitives")
    match claim.type:
        case "string":
            return str(value)
        case "int":
            return int(value)
        case "float":
            return float(value)
        case "bool":
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
    return value  # pragma: no cover


def map_claims(
    claims: tuple[Claim, ...], answer: Any, *, session_id: str, origin: Origin | None
) -> dict[str, Any]:
    """The token claims a provider's answer turns into (``remove``d claims left out)."""
    out: dict[str, Any] = {}
    for claim in claims:
        if claim.source:
            raw = _path(answer, claim.source)
        elif claim.special:
            raw = {
                "session_id": session_id,
                "client_ip": origin.client_ip if origin else "",
                "user_agent": origin.user_agent if origin else "",
            }[claim.special]
        else:
            raw = claim.value
        try:
            value = _coerce(claim, raw)
        except (TypeError, ValueError) as exc:
            raise errors.UpstreamError(
                f"the auth provider's {claim.source or claim.name!r} is not a {claim.type}: {exc}"
            ) from None
        if value is None:
            if claim.required:
                raise errors.UpstreamError(
                    f"the auth provider's answer has no {claim.source or claim.name!r}"
                )
            continue
        if not claim.remove:
            out[claim.name] = value
    return out


def strip_removed(claims: tuple[Claim, ...], answer: Any) -> Any:
    """The provider's answer without the sources of ``remove``d claims (for ``thru``)."""
    if not isinstance(answer, dict):
        return answer
    for claim in claims:
        if claim.remove and claim.source:
            *parents, last = claim.source.split(".")
            node = _path(answer, ".".join(parents)) if parents else answer
            if isinstance(node, dict):
                node.pop(last, None)
    return answer


def identity_of(payload: dict[str, Any], session_id: str | None) -> Identity:
    roles = payload.get("roles") or ()
    return Identity(
        subject=str(payload.get("sub", "")),
        roles=tuple(str(r) for r in roles) if isinstance(roles, list) else (str(roles),),
        claims={k: v for k, v in payload.items() if k not in _IDENTITY_SKIP},
        session_id=session_id,
    )


class Jwks:
    """An external provider's public keys by ``kid``: cached, fetched again when stale or
    when a token names a ``kid`` not seen yet (at most once per ``refetch_interval``)."""

    def __init__(self, config: Verifiable) -> None:
        self.config = config
        self.keys: dict[str, jwt.PyJWK] = {}
        self.fetches = 0
        self._fetched = 0.0
        self._tried = -1e9
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None

    async def key(self, kid: str) -> jwt.PyJWK | None:
        now = time.monotonic()
        stale = now - self._fetched > self.config.cache_ttl
        if kid in self.keys and not stale:
            return self.keys[kid]
        async with self._lock:
            now = time.monotonic()
            if kid in self.keys and now - self._fetched <= self.config.cache_ttl:
                return self.keys[kid]
            if stale or now - self._tried >= self.config.refetch_interval:
                self._tried = now
                await self._fetch()
        return self.keys.get(kid)

    async def _fetch(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        self.fetches += 1
        try:
            timeout = aiohttp.ClientTimeout(total=self.config.timeout)
            async with self._session.get(self.config.jwks_url, timeout=timeout) as resp:
                if resp.status != 200:
                    raise ValueError(f"status {resp.status}")
                data = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("JWKS %s not fetched: %s", self.config.jwks_url, exc)
            return
        keys: dict[str, jwt.PyJWK] = {}
        for raw in data.get("keys", []) if isinstance(data, dict) else []:
            try:
                key = jwt.PyJWK(raw)
            except jwt.PyJWKError:
                continue
            kid = raw.get("kid")
            if kid and key.algorithm_name in self.config.algorithms:
                keys[kid] = key
        self.keys = keys
        self._fetched = time.monotonic()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


_BAD_SIGNATURE = "the token's signature is invalid"
_BAD_ALGORITHM = "the token's algorithm is not accepted"
_OTHER_KEY = (_BAD_SIGNATURE, _BAD_ALGORITHM)
"""The refusals another (previous) key may still accept."""


class TokenService:
    """Issues and checks the tokens of one ``tokens.NAME``."""

    def __init__(self, name: str, config: Token, csrf_secret: str = "") -> None:
        """``csrf_secret``: the HMAC key of CSRF tokens (``gateway.csrf.secret``, resolved
        here); empty = derived from the signing key."""
        self.name = name
        self.config = config
        self.algorithm = config.algorithm
        self.kid = config.key_id or name
        where = f"tokens.{name}"
        self._sign_key: Any
        self._verify_key: Any
        if config.algorithm in ASYMMETRIC:
            private = resolve_secret(config.private_key, f"{where}.private_key").encode()
            signing = private
            public = resolve_secret(config.public_key, f"{where}.public_key").encode()
            try:
                self._sign_key = serialization.load_pem_private_key(private, password=None)
                self._verify_key = serialization.load_pem_public_key(public)
            except ValueError as exc:
                raise ConfigError(f"{where}: cannot load the key pair: {exc}") from None
        else:
            secret = resolve_secret(config.secret, f"{where}.secret").encode()
            signing = secret
            if len(secret) < MIN_SECRET:
                raise ConfigError(f"{where}.secret: needs at least {MIN_SECRET} bytes")
            self._sign_key = self._verify_key = secret
        if csrf_secret:
            signing = resolve_secret(csrf_secret, "gateway.csrf.secret").encode()
        self._csrf_key = hmac.new(signing, b"busgate csrf v1", hashlib.sha256).digest()
        self.api_keys = {
            key.hash: Identity(subject=key.subject or key_name, roles=key.roles)
            for key_name, key in config.api_keys.items()
        }
        self.jwks = Jwks(config.verifiable) if config.verifiable else None
        self.encryption = TokenEncryption(name, config, self.kid) if config.encryption else None
        self._algorithms = [config.algorithm]
        self._options: Any = {"require": ["exp", "iat", "sub", "typ"]}
        self._cache: dict[str, tuple[Identity, float]] = {}
        self._previous: list[tuple[Any, Sequence[str]]] = []
        """Verification keys of this token before a config refresh changed it (``succeed``)."""
        self.verified = 0
        """Signature checks done (cache misses), for status and benchmarks."""

    # -- issuing ----------------------------------------------------------------------

    def _encode(self, payload: dict[str, Any]) -> str:
        signed = jwt.encode(
            payload, self._sign_key, algorithm=self.algorithm, headers={"kid": self.kid}
        )
        return signed if self.encryption is None else self.encryption.wrap(signed)

    def access(
        self, subject: str, claims: dict[str, Any], session_id: str, now: float | None = None
    ) -> str:
        now = int(time.time() if now is None else now)
        payload = {
            **claims,
            "iss": self.config.issuer,
            "aud": self.config.audience,
            "sub": subject,
            "iat": now,
            "nbf": now,
            "exp": now + self.config.expiration,
            "sid": session_id,
            "typ": "access",
            "jti": secrets.token_urlsafe(9),
        }
        return self._encode(payload)

    def refresh(self, subject: str, session_id: str, refresh_id: str, expires: float) -> str:
        now = int(time.time())
        payload = {
            "iss": self.config.issuer,
            "aud": self.config.audience,
            "sub": subject,
            "iat": now,
            "exp": int(expires),
            "sid": session_id,
            "rti": refresh_id,
            "typ": "refresh",
        }
        return self._encode(payload)

    # -- checking ---------------------------------------------------------------------

    def succeed(self, old: TokenService) -> None:
        """Take over from ``old`` after a config refresh: tokens it signed stay valid until
        they expire, when the key changed (a rotation must not log everybody out)."""
        keys: list[tuple[Any, Sequence[str]]] = [(old._verify_key, old._algorithms)]
        keys += old._previous
        self._previous = [k for k in keys if k[0] != self._verify_key][:4]

    def _decode(self, token: str, *, verify_exp: bool = True) -> dict[str, Any]:
        if self._previous:
            keys: list[tuple[Any, Sequence[str]]] = [(self._verify_key, self._algorithms)]
            for key, algorithms in keys + self._previous:
                try:
                    return self._decode_with(token, key, algorithms, verify_exp=verify_exp)
                except errors.Unauthorized as exc:
                    if exc.message not in _OTHER_KEY:
                        raise
            raise errors.Unauthorized(_BAD_SIGNATURE)
        return self._decode_with(token, self._verify_key, self._algorithms, verify_exp=verify_exp)

    def _decode_with(
        self, token: str, key: Any, algorithms: Sequence[str], *, verify_exp: bool
    ) -> dict[str, Any]:
        if len(token) > self.config.max_size:
            raise errors.Unauthorized(f"the token is longer than {self.config.max_size} bytes")
        if not token.isascii():  # a JWT is base64url and dots; stray bytes broke pyjwt
            raise errors.Unauthorized("the token is malformed")
        options: Any = self._options if verify_exp else {**self._options, "verify_exp": False}
        if self.encryption is not None and is_encrypted(token):
            token = self.encryption.unwrap(token)
        try:
            return jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self.config.audience,
                issuer=self.config.issuer,
                leeway=self.config.leeway,
                options=options,
            )
        except jwt.ExpiredSignatureError:
            raise errors.Unauthorized("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise errors.Unauthorized("the token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise errors.Unauthorized("the token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise errors.Unauthorized("the token is from another issuer") from None
        except jwt.InvalidAlgorithmError:
            raise errors.Unauthorized(_BAD_ALGORITHM) from None
        except jwt.InvalidSignatureError:
            raise errors.Unauthorized(_BAD_SIGNATURE) from None
        except jwt.InvalidTokenError as exc:
            raise errors.Unauthorized(f"the token is invalid: {type(exc).__name__}") from None

    def cached(self, token: str) -> Identity | None:
        """The hot path: an identity verified before and not expired since, or None."""
        found = self._cache.get(token)
        if found is None:
            return None
        if found[1] <= time.time():
            self._cache.pop(token, None)
            return None
        return found[0]

    def expiry(self, token: str) -> float | None:
        """When a verified (cached) token expires."""
        found = self._cache.get(token)
        return found[1] - self.config.leeway if found else None

    async def verify(self, token: str) -> Identity:
        """Check an access token (ours, or the external provider's); raise Unauthorized."""
        found = self.cached(token)
        if found is not None:
            return found
        if len(token) > self.config.max_size:
            raise errors.Unauthorized(f"the token is longer than {self.config.max_size} bytes")
        if not token.isascii():
            raise errors.Unauthorized("the token is malformed")
        if self.jwks is not None and not is_encrypted(token):  # an external one is a JWS
            try:
                header = jwt.get_unverified_header(token)
            except jwt.InvalidTokenError:
                raise errors.Unauthorized("the token is malformed") from None
            kid = header.get("kid")
            if kid is not None and kid != self.kid:
                return await self._verify_external(token, header)
        payload = self._decode(token)
        if payload.get("typ") != "access":
            raise errors.Unauthorized("not an access token")
        identity = identity_of(payload, payload.get("sid"))
        self._remember(token, identity, float(payload["exp"]))
        return identity

    def _remember(self, token: str, identity: Identity, exp: float) -> None:
        self.verified += 1
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        self._cache[token] = (identity, exp + self.config.leeway)

    async def _verify_external(self, token: str, header: dict[str, Any]) -> Identity:
        assert self.jwks is not None
        ext = self.jwks.config
        alg = header.get("alg")
        if alg not in ext.algorithms:
            raise errors.Unauthorized("the token's algorithm is not accepted")
        key = await self.jwks.key(str(header.get("kid")))
        if key is None:
            raise errors.Unauthorized("the token is signed by an unknown key")
        try:
            payload = jwt.decode(
                token,
                key,
                algorithms=[str(alg)],
                audience=ext.audience or None,
                issuer=ext.issuer or None,
                leeway=self.config.leeway,
                options={"require": ["exp"], "verify_aud": bool(ext.audience)},
            )
        except jwt.ExpiredSignatureError:
            raise errors.Unauthorized("the token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise errors.Unauthorized(f"the token is invalid: {type(exc).__name__}") from None
        subject = _path(payload, ext.subject_claim)
        if not isinstance(subject, str) or not subject:
            raise errors.Unauthorized("the token names no subject")
        roles = _path(payload, ext.roles_claim) or []
        identity = Identity(
            subject=subject,
            roles=tuple(str(r) for r in roles) if isinstance(roles, list) else (),
            claims={k: v for k, v in payload.items() if k not in _IDENTITY_SKIP},
            session_id=None,
        )
        self._remember(token, identity, float(payload["exp"]))
        return identity

    def verify_refresh(self, token: str) -> dict[str, Any]:
        payload = self._decode(token)
        if payload.get("typ") != "refresh" or "sid" not in payload or "rti" not in payload:
            raise errors.Unauthorized("not a refresh token")
        return payload

    def session_of(self, token: str) -> dict[str, Any]:
        """Logout: a token of ours, checked but possibly expired."""
        return self._decode(token, verify_exp=False)

    def csrf_token(self, session_id: str) -> str:
        """The CSRF token of a session: an HMAC of its id, so only who can read the
        session's answers (the login) knows it, and a planted cookie cannot match."""
        digest = hmac.new(self._csrf_key, session_id.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def session_id_of(self, token: str) -> str | None:
        """The session of one of our tokens (access or refresh, expired or not; the
        signature checked), or None."""
        identity = self.cached(token)
        if identity is not None:
            return identity.session_id
        try:
            sid = self.session_of(token).get("sid")
        except errors.Unauthorized:
            return None
        return sid if isinstance(sid, str) else None

    def api_key(self, key: str) -> Identity | None:
        if len(key) > self.config.max_size or not is_text(key):
            return None
        return self.api_keys.get(api_key_hash(key))

    async def close(self) -> None:
        if self.jwks is not None:
            await self.jwks.close()
