"""The edge's auth state, built once from config: token services, per-channel access rules
and the shared session store (set when the bus is up)."""

from __future__ import annotations

from aiohttp import web

from busgate.bus.sessions import Sessions
from busgate.contracts import errors
from busgate.contracts.config import Config
from busgate.contracts.wire import Identity
from busgate.edge.access import ChannelAccess
from busgate.edge.cert_identity import CertIdentities
from busgate.edge.responses import error_response
from busgate.edge.tokens import TokenService


class AuthContext:
    checking: bool = False
    """Whether the auth middleware is installed (only when the config at start has access
    rules: a node without any pays nothing per call for it)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        csrf = config.gateway.csrf.secret
        self.tokens = {
            name: TokenService(name, token, csrf) for name, token in config.tokens.items()
        }
        self.access = {name: ChannelAccess(ch) for name, ch in config.channels.items()}
        self.channel_tokens = {
            name: self.tokens[ch.auth] for name, ch in config.channels.items() if ch.auth
        }
        self.sessions: Sessions | None = None
        tls = config.gateway.tls
        self.certs = (
            CertIdentities(tls.identity) if tls is not None and tls.client_auth != "none" else None
        )

    def swap(self, config: Config, tokens: dict[str, TokenService]) -> list[TokenService]:
        """Take a refreshed config's tokens and rules, in place (the auth middleware holds
        these dicts); returns the token services it replaced."""
        retired = [s for name, s in self.tokens.items() if tokens.get(name) is not s]
        access = {name: ChannelAccess(ch) for name, ch in config.channels.items()}
        channel_tokens = {name: tokens[ch.auth] for name, ch in config.channels.items() if ch.auth}
        self.config = config
        self.tokens.clear()
        self.tokens.update(tokens)
        self.access.clear()
        self.access.update(access)
        self.channel_tokens.clear()
        self.channel_tokens.update(channel_tokens)
        return retired

    @property
    def session_ttl(self) -> float:
        """How long the shared store keeps a session: the longest refresh lifetime, plus a
        margin for clock skew between edges."""
        tokens = self.config.tokens.values()
        lifetimes = [
            min(max(t.long_expiration, t.refresh_expiration), t.session_max_age) for t in tokens
        ]
        return float(max(lifetimes, default=86_400) + 3600)

    def is_revoked(self, identity: Identity) -> bool:
        sid = identity.session_id
        sessions = self.sessions
        return (
            sid is not None and sessions is not None and sessions.is_revoked(sid, identity.subject)
        )

    async def close(self) -> None:
        for service in self.tokens.values():
            await service.close()


_REPLACE = str.maketrans({"\u2026": "...", '"': "'", "\\": "/"})


def _quotable(text: str) -> str:
    """Text for a quoted header parameter (RFC 6750 §3: visible ASCII but '"' and '\\')."""
    text = text.translate(_REPLACE)
    if text.isascii() and text.isprintable():
        return text
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def unauthorized(
    exc: errors.BusgateError, request_id: str | None, *, missing: bool = False
) -> web.Response:
    """A 401 that tells the client how to authenticate (RFC 6750 §3)."""
    response = error_response(exc, request_id)
    if missing:
        response.headers["WWW-Authenticate"] = 'Bearer realm="busgate"'
    else:
        description = _quotable(exc.message)
        response.headers["WWW-Authenticate"] = (
            f'Bearer realm="busgate", error="invalid_token", error_description="{description}"'
        )
    return response


def set_token_cookies(
    response: web.StreamResponse,
    service: TokenService,
    *,
    access: str | None = None,
    refresh: str | None = None,
    max_age: int | None = None,
) -> None:
    """HttpOnly cookies: the access token on ``/api``, the refresh token only where it is
    used (``/api/auth/refresh``). Without ``max_age`` they last as long as the browser."""
    c = service.config.cookies
    common = {
        "domain": c.domain or None,
        "secure": c.secure,
        "httponly": c.http_only,
        "samesite": c.same_site,
        "max_age": max_age,
    }
    if access is not None:
        response.set_cookie(c.access, access, path=c.path, **common)  # type: ignore[arg-type]
    if refresh is not None:
        response.set_cookie(c.refresh, refresh, path=c.refresh_path, **common)  # type: ignore[arg-type]


def clear_token_cookies(response: web.StreamResponse, service: TokenService) -> None:
    c = service.config.cookies
    domain = c.domain or None
    response.del_cookie(c.access, path=c.path, domain=domain, secure=c.secure, samesite=c.same_site)
    response.del_cookie(
        c.refresh, path=c.refresh_path, domain=domain, secure=c.secure, samesite=c.same_site
    )
