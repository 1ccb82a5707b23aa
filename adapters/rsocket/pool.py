"""Connections to an RSocket system's hosts: round robin over the connected ones, reconnect.

rsocket-py's own ``LoadBalancerRoundRobin`` picks hosts blindly (a dead one included) and
its client swallows connection errors (it logs them and returns), so the pool opens each
connection itself -- ``asyncio.open_connection`` for tcp, aiohttp's ``ws_connect`` for
websocket -- where a refusal raises, and hands the open transport to an ``RSocketClient``.

A host whose connection drops is retried in the background ``retry_attempts`` times,
``retry_duration`` seconds apart; after that it rests until a call finds no connected host,
which then tries every host once more, within the call's deadline. So a runner that is down
costs a call one refused connect per host (a 502 at once), never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta
from typing import Any

import aiohttp
from rsocket.extensions.mimetypes import WellKnownMimeTypes
from rsocket.helpers import single_transport_provider
from rsocket.request_handler import BaseRequestHandler
from rsocket.rsocket_client import RSocketClient
from rsocket.transports.aiohttp_websocket import TransportAioHttpClient
from rsocket.transports.tcp import TransportTCP

from busgate.contracts import errors
from busgate.contracts.config import RsocketSystem

log = logging.getLogger("busgate.adapter.rsocket")

DEFAULT_PORT = 7000
CONNECT_TIMEOUT = 2.0
"""Seconds one connection attempt may take at most (less when the call's deadline is nearer)."""


def targets(system: RsocketSystem) -> list[str]:
    """``host:port`` per tcp host (port 7000 when absent), or the websocket URLs."""
    if system.protocol == "websocket":
        return list(system.urls)
    found = []
    for host in system.hosts:
        name, sep, port = host.rpartition(":")
        found.append(host if sep and port.isdigit() and name else f"{host}:{DEFAULT_PORT}")
    return found


class _Watch(BaseRequestHandler):  # type: ignore[misc]
    """Tells its connection when the library sees the link go."""

    def __init__(self, connection: Connection) -> None:
        super().__init__()
        self.connection = connection

    async def on_close(self, rsocket: Any, exception: Exception | None = None) -> None:
        self.connection.lost(rsocket)

    async def on_connection_error(self, rsocket: Any, exception: Exception) -> None:
        self.connection.lost(rsocket)

    async def on_keepalive_timeout(self, time_since_last_keepalive: Any, rsocket: Any) -> None:
        # A host that accepts but stopped answering (hung, or a half-open link): without
        # this its calls would each wait for their deadline.
        self.connection.lost(rsocket)


class Connection:
    """One host, and its RSocket client while connected."""

    def __init__(self, target: str, system: RsocketSystem, pool: Pool) -> None:
        self.target = target
        self.system = system
        self.pool = pool
        self.client: RSocketClient | None = None
        self._lock = asyncio.Lock()
        self._retry: asyncio.Task[None] | None = None

    async def connect(self, within: float) -> RSocketClient:
        """The connected client, opening it if needed; OSError / TimeoutError when the host
        cannot be reached ``within`` seconds."""
        async with self._lock:
            if self.client is not None:
                return self.client
            async with asyncio.timeout(min(within, CONNECT_TIMEOUT)):
                transport = await self._transport()
            client = RSocketClient(
                single_transport_provider(transport),
                handler_factory=lambda: _Watch(self),
                metadata_encoding=WellKnownMimeTypes.MESSAGE_RSOCKET_COMPOSITE_METADATA,
                data_encoding=WellKnownMimeTypes.APPLICATION_JSON,
                keep_alive_period=timedelta(seconds=5),
                max_lifetime_period=timedelta(seconds=30),
            )
            await client.connect()
            self.client = client
            log.info("rsocket system %s: connected to %s", self.pool.name, self.target)
            return client

    async def _transport(self) -> TransportTCP | TransportAioHttpClient:
        if self.system.protocol == "websocket":
            ws = await self.pool.session().ws_connect(self.target)
            return TransportAioHttpClient(websocket=ws)
        host, _, port = self.target.rpartition(":")
        reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
        return TransportTCP(reader, writer)

    def lost(self, rsocket: Any) -> None:
        """The link of ``rsocket`` went (its pending requests have failed already)."""
        if self.client is not rsocket or self.pool.closing:
            return
        self.client = None
        log.warning("rsocket system %s: lost %s", self.pool.name, self.target)
        asyncio.get_running_loop().create_task(self._close(rsocket))
        if self.system.retry_attempts > 0 and (self._retry is None or self._retry.done()):
            self._retry = asyncio.create_task(self._reconnect())

    async def _close(self, rsocket: RSocketClient) -> None:
        """Fail what is still pending on it (a 502 now, not a 504 later), then close it."""
        with contextlib.suppress(Exception):
            rsocket.stop_all_streams()
        with contextlib.suppress(Exception):
            await rsocket.close()

    def ensure(self) -> None:
        """Start connecting in the background unless connected or already trying."""
        if self.client is None and (self._retry is None or self._retry.done()):
            self._retry = asyncio.create_task(self._reconnect(first=True))

    async def _reconnect(self, first: bool = False) -> None:
        for attempt in range(self.system.retry_attempts + first):
            if attempt or not first:
                await asyncio.sleep(self.system.retry_duration)
            if self.client is not None or self.pool.closing:
                return
            try:
                await self.connect(CONNECT_TIMEOUT)
                return
            except (OSError, TimeoutError, aiohttp.ClientError):
                continue

    async def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry
        if self.client is not None:
            client, self.client = self.client, None
            await self._close(client)


class Pool:
    """The system's connections, used in turn."""

    def __init__(self, name: str, system: RsocketSystem) -> None:
        self.name = name
        self.closing = False
        self.connections = [Connection(t, system, self) for t in targets(system)]
        self._next = 0
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def pick(self, within: float) -> RSocketClient:
        """A connected client, the next in turn; UpstreamUnreachable when no host answers."""
        connected = []
        for connection in self.connections:
            if connection.client is None:
                connection.ensure()  # so that the next calls spread over it too
            else:
                connected.append(connection.client)
        turn = self._next
        self._next += 1
        if connected:
            return connected[turn % len(connected)]
        count = len(self.connections)
        order = [self.connections[(turn + i) % count] for i in range(count)]
        for connection in order:
            try:
                return await connection.connect(within)
            except (OSError, TimeoutError, aiohttp.ClientError) as exc:
                log.debug("rsocket system %s: %s: %r", self.name, connection.target, exc)
        raise errors.UpstreamUnreachable(f"no runner of system {self.name!r} can be reached")

    async def connect_all(self) -> int:
        """Try every host once now; how many are connected."""
        for connection in self.connections:
            with contextlib.suppress(OSError, TimeoutError, aiohttp.ClientError):
                await connection.connect(CONNECT_TIMEOUT)
        return sum(c.client is not None for c in self.connections)

    async def close(self) -> None:
        self.closing = True
        for connection in self.connections:
            await connection.close()
        if self._session is not None:
            await self._session.close()
