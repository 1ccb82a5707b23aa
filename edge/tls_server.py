"""HTTPS for the edge: the ``[gateway.tls]`` certificate, rotated without a restart.

The listening socket keeps one ``SSLContext`` for good (the one ``create_server`` got); its
``sni_callback`` -- called for every handshake, with or without SNI -- hands the handshake
to the context of the certificate current at that moment. Each rotation builds a new
context, so connections already open keep theirs and new ones get the new certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator

from busgate.bus.base import Bus
from busgate.bus.certificates import StoredCert, certificates
from busgate.bus.store import Store
from busgate.contracts.config import ServerTls
from busgate.tls import watch
from busgate.tls.contexts import server_context
from busgate.tls.pem import KeyPair, PemError, parse


def source_of(tls: ServerTls) -> watch.Source:
    if tls.source == "self-signed":
        return watch.self_signed_source(
            tls.self_signed_hosts, tls.self_signed_lifetime, tls.renew_before
        )
    if tls.source == "folder":
        return watch.folder(tls.folder)
    return watch.files(tls.cert, tls.key, key_name="gateway.tls.key")


class ServerCerts:
    """The edge's certificates: :attr:`context` for the server, rotated by :meth:`run`."""

    def __init__(self, tls: ServerTls, source: watch.Source | None = None) -> None:
        self.tls = tls
        self._current: ssl.SSLContext | None = None
        self.watch = watch.CertWatch(
            "gateway.tls",
            source or source_of(tls),
            poll=tls.poll,
            grace=tls.grace,
            apply=self._apply,
            ca=tls.ca if tls.client_auth != "none" else "",
        )
        assert self._current is not None  # set by the first apply
        self.context: ssl.SSLContext = self._current
        self.context.sni_callback = self._pick

    def _apply(self, pair: KeyPair) -> None:
        tls = self.tls
        self._current = server_context(
            pair,
            ca=tls.ca,
            client_auth=tls.client_auth,
            min_version=tls.min_version,
            ciphers=tls.ciphers,
        )

    def _pick(self, sslobj: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        current = self._current
        if current is not None and current is not ctx:
            sslobj.context = current

    async def run(self) -> None:
        await self.watch.run()


def from_store(store: Store[StoredCert], name: str) -> watch.Source:
    """The certificate pushed under ``name``, from the store's local view (no I/O)."""

    def source() -> KeyPair:
        stored = store.value(name)
        if stored is None:
            raise PemError(f"gateway.tls.name: no certificate {name!r} in the bus's store")
        label = f"certificate {name!r} from the bus"
        return parse(stored.cert_pem, stored.key_pem, cert_name=label, key_name=label)

    return source


@contextlib.asynccontextmanager
async def rotating(tls: ServerTls, bus: Bus | None = None) -> AsyncIterator[ServerCerts]:
    """The edge's certificates, polled for rotation while the context is open; ``bus`` is
    the edge's (connected) bus, for ``source = "bus"``."""
    async with contextlib.AsyncExitStack() as stack:
        source = None
        if tls.source == "bus":
            store = certificates(bus)
            await store.start()
            stack.push_async_callback(store.close)
            source = from_store(store, tls.name)
        certs = ServerCerts(tls, source)
        yield await stack.enter_async_context(_polled(certs))


@contextlib.asynccontextmanager
async def _polled(certs: ServerCerts) -> AsyncIterator[ServerCerts]:
    task = asyncio.create_task(certs.run(), name="busgate-tls-rotation")
    try:
        yield certs
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
