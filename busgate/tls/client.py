"""TLS for a client (an adapter calling an ``https://`` runner): the server verified against
``ca``, and a client certificate (mTLS); both files re-read every ``poll`` seconds.

Callers pass :attr:`ClientCerts.context` with each request (aiohttp's ``ssl=``): its
connection pool is keyed by the context, so a rotated certificate is used by new connections
while the pooled ones finish their keep-alive life.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from busgate.contracts.config import ClientTls
from busgate.tls import watch
from busgate.tls.contexts import client_context
from busgate.tls.pem import KeyPair


class ClientCerts:
    def __init__(self, name: str, tls: ClientTls) -> None:
        self.tls = tls
        self.context: ssl.SSLContext = client_context(None, ca=tls.ca, min_version=tls.min_version)
        self.watch: watch.CertWatch[KeyPair | None] | None = None
        self._task: asyncio.Task[None] | None = None
        if tls.cert or tls.ca:
            source: watch.Source | None = None
            if tls.cert:
                source = watch.files(tls.cert, tls.key, key_name=f"{name}.tls.key")
            self.watch = watch.CertWatch[KeyPair | None](
                name,
                source or watch.no_cert,
                poll=tls.poll,
                grace=0,
                apply=self._apply,
                ca=tls.ca,
            )

    def _apply(self, pair: KeyPair | None) -> None:
        self.context = client_context(pair, ca=self.tls.ca, min_version=self.tls.min_version)

    def start(self) -> None:
        """Start polling the client certificate (in a running loop); idempotent."""
        if self.watch is not None and self._task is None:
            self._task = asyncio.create_task(self.watch.run(), name="busgate-client-tls")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def ssl_for(certs: ClientCerts | None) -> ssl.SSLContext | bool:
    """aiohttp's ``ssl=`` for a connection: the system's own TLS (CA, client certificate)
    when it has one, else the default verification."""
    return certs.context if certs is not None else True
