"""Share the schemas of the systems an adapter serves (``schema`` / ``schema_url`` of an RPC
system) in the bus's store (``bus.schemas``), for the edges to merge into their OpenAPI
document (``edge.contributed``).

A runner may start after its adapter (``busgate dev`` starts them side by side), so a fetch
that fails is tried again, with a growing pause, up to :data:`ATTEMPTS` times; then a log
line says why and the OpenAPI document goes on without it. A document that is not a JSON
object with ``paths``, or larger than ``bus.schemas.MAX_DOCUMENT``, is not shared. The
edges check the rest (they decide what their document can take).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
from yarl import URL

from busgate.adapters.rpc.client import RpcClient
from busgate.bus.base import Bus
from busgate.bus.schemas import MAX_DOCUMENT, BadDocument, StoredSchema, document_of, schemas
from busgate.bus.store import Store
from busgate.contracts.config import Config, RpcSystem
from busgate.contracts.errors import BusgateError

log = logging.getLogger("busgate.adapter.schemas")

ATTEMPTS = 8
FIRST_PAUSE = 0.25
MAX_PAUSE = 10.0
FETCH_TIMEOUT = 5.0


class SchemaError(Exception):
    """A contributed schema that cannot be shared (unreadable, not JSON, too large)."""


def source_of(system: RpcSystem) -> str:
    """Where ``system``'s schema comes from: a file, a URL, or "" (none)."""
    if system.schema:
        return system.schema
    if system.schema_url:
        return str(URL(system.base_url.rstrip("/") + "/").join(URL(system.schema_url)))
    return ""


def checked(data: bytes) -> bytes:
    if len(data) > MAX_DOCUMENT:
        raise SchemaError(f"larger than {MAX_DOCUMENT} bytes")
    try:
        document_of(data)
    except BadDocument as exc:
        raise SchemaError(str(exc)) from None
    return data


async def read(
    system: RpcSystem, session: aiohttp.ClientSession, client: RpcClient | None = None
) -> bytes:
    """The document, checked; raises SchemaError. A ``schema_url`` on the system's runners
    is fetched through ``client`` (the adapter's client of the system: its headers, TLS and
    runner credentials); one elsewhere through ``session``, with none of them: a runner's
    credentials go to its runners only."""
    if system.schema:
        try:
            data = await asyncio.to_thread(Path(system.schema).read_bytes)
        except OSError as exc:
            raise SchemaError(f"cannot read {system.schema}: {exc.strerror}") from None
        return checked(data)
    url = source_of(system)
    try:
        if client is not None and client.on_runner(url):
            status, data = await client.fetch(url, MAX_DOCUMENT + 1, FETCH_TIMEOUT)
        else:
            timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT)
            async with session.get(url, timeout=timeout) as resp:
                status, data = resp.status, await resp.content.read(MAX_DOCUMENT + 1)
    except (aiohttp.ClientError, TimeoutError, BusgateError) as exc:
        raise SchemaError(f"cannot fetch {url}: {exc or type(exc).__name__}") from None
    if status != 200:
        raise SchemaError(f"{url} answered {status}")
    return checked(data)


class SchemaPublisher:
    """Puts the schema of each served system that names one into the store, on start and
    whenever a refresh changes where it comes from."""

    def __init__(self, bus: Bus, clients: Callable[[str], object] = lambda name: None) -> None:
        self.clients = clients
        """The adapter's current client of a system (looked up at each attempt: a refresh
        may replace it), for fetching ``schema_url`` as its runner calls go."""
        self.store: Store[StoredSchema] = schemas(bus)
        self.sources: dict[str, str] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._starting: asyncio.Future[None] | None = None

    async def update(self, config: Config, served: list[str]) -> None:
        """Share the schemas of ``served`` that changed; forget those of systems that no
        longer name one (an adapter that stops serving a system leaves it to the others)."""
        wanted: dict[str, tuple[RpcSystem, str]] = {}
        for name in served:
            system = config.systems.get(name)
            if isinstance(system, RpcSystem):
                wanted[name] = (system, source_of(system))
        for name, (system, source) in wanted.items():
            if self.sources.get(name, "") == source:
                continue
            self.sources[name] = source
            if (old := self.tasks.pop(name, None)) is not None:
                old.cancel()
            if source:
                self.tasks[name] = asyncio.create_task(self._share(name, system, source))
            elif self._starting is not None:
                self.tasks[name] = asyncio.create_task(self._forget(name))

    async def _started(self) -> None:
        """The store, started once, by the first task that needs it (the adapter's start-up
        never waits for it)."""
        starting = self._starting
        failed = (
            starting is not None
            and starting.done()
            and (starting.cancelled() or starting.exception() is not None)
        )
        if starting is None or failed:  # a failed start is tried again
            starting = self._starting = asyncio.ensure_future(self.store.start())
        await asyncio.shield(starting)

    async def _forget(self, name: str) -> None:
        try:
            await self._started()
            await self.store.delete(name)
        except Exception as exc:
            log.info("system %s: schema not forgotten: %s", name, exc)

    async def _share(self, name: str, system: RpcSystem, source: str) -> None:
        pause = FIRST_PAUSE
        for attempt in range(1, ATTEMPTS + 1):
            try:
                client = self.clients(name)
                data = await read(
                    system, self.session, client if isinstance(client, RpcClient) else None
                )
                await self._started()
                await self.store.put(
                    name, StoredSchema(document=data, source=source, at=time.time())
                )
            except Exception as exc:  # the runner not up yet, the bus: try again
                if attempt == ATTEMPTS:
                    log.warning("system %s: schema not shared: %s", name, exc)
                    return
                log.info("system %s: schema not shared yet: %s", name, exc)
            else:
                log.info("system %s: schema shared from %s", name, source)
                return
            await asyncio.sleep(pause)
            pause = min(pause * 2, MAX_PAUSE)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        for task in self.tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.tasks.clear()
        if self._session is not None:
            await self._session.close()
        if self._starting is not None:
            with contextlib.suppress(Exception):
                await self._starting
            await self.store.close()
