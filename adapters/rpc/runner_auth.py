"""Runner auth: OAuth 2 client credentials (RFC 6749 §4.4) for ``[systems.S.auth]``.

One token per system, shared by all its calls: fetched on first use (concurrent calls wait
for that one fetch), kept until ``margin`` seconds before its ``expires_in``, fetched again
when a runner answers 401 to it. Neither the secret nor a token is ever logged.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import msgspec
from yarl import URL

from busgate.contracts import errors
from busgate.contracts.config import RunnerAuth
from busgate.contracts.secrets import resolve_secret
from busgate.tls.client import ClientCerts, ssl_for

log = logging.getLogger("busgate.adapter.rpc.auth")


class TokenAnswer(msgspec.Struct):
    access_token: str
    expires_in: float = 3600.0
    token_type: str = "Bearer"


_decode = msgspec.json.Decoder(TokenAnswer).decode


class ClientCredentials:
    def __init__(
        self, system: str, auth: RunnerAuth, base_url: str, tls: ClientCerts | None = None
    ) -> None:
        self.system = system
        self.tls = tls
        """The system's client TLS (its CA, its client certificate) for an https token URL."""
        self.auth = auth
        self.url = URL(base_url).join(URL(auth.token_url))
        secret = resolve_secret(auth.client_secret, f"systems.{system}.auth.client_secret")
        self._basic = aiohttp.encode_basic_auth(auth.client_id, secret)
        self._token = ""
        self._expires = 0.0
        self._lock = asyncio.Lock()
        self.fetched = 0

    async def token(self, session: aiohttp.ClientSession) -> str:
        """A token good for at least ``margin`` more seconds."""
        if self._token and time.monotonic() < self._expires:
            return self._token
        async with self._lock:  # one fetch for all the calls that found no token
            if not self._token or time.monotonic() >= self._expires:
                await self._fetch(session)
            return self._token

    async def renew(self, session: aiohttp.ClientSession, refused: str) -> str:
        """A runner answered 401 to ``refused``: a new token, unless another call has
        fetched one since."""
        async with self._lock:
            if self._token == refused:
                await self._fetch(session)
            return self._token

    async def _fetch(self, session: aiohttp.ClientSession) -> None:
        form = {"grant_type": "client_credentials"}
        if self.auth.scope:
            form["scope"] = self.auth.scope
        if self.auth.audience:
            form["audience"] = self.auth.audience
        where = f"the token endpoint of system {self.system!r}"
        try:
            async with session.post(
                self.url,
                data=form,
                headers={"Authorization": self._basic},
                timeout=aiohttp.ClientTimeout(total=self.auth.timeout),
                ssl=ssl_for(self.tls),
            ) as resp:
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise errors.UpstreamUnreachable(
                f"{where} is unreachable: {type(exc).__name__}"
            ) from None
        if status != 200:
            log.warning("%s answered %d", where, status)
            raise errors.UpstreamError(f"{where} refused the client credentials ({status})")
        try:
            answer = _decode(body)
        except msgspec.DecodeError:
            raise errors.UpstreamError(f"{where} answered no access_token") from None
        self.fetched += 1
        self._token = answer.access_token
        self._expires = time.monotonic() + max(answer.expires_in - self.auth.margin, 0.0)
