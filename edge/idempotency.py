"""``Idempotency-Key`` (IETF httpapi draft) on commands, sends and asynchronous calls.

The key is scoped to the caller (subject, or ``anonymous``) and the kind of call, hashed, and
claimed in the shared store with a put-if-absent: the edge that wins publishes, then stores
the 202 it answered; every other call with that key -- on any edge, within the window --
gets that same answer back (``Idempotent-Replayed: true``) and publishes nothing. The same key
with another body is a 422; while the first call is still publishing, another waits for it
briefly, then gets a 409. A call whose publish fails releases the key, so a retry can go.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from busgate.bus.base import Bus
from busgate.bus.store import Store, open_store
from busgate.contracts import errors
from busgate.contracts.commands import IdempotencyRecord
from busgate.contracts.wire import Identity
from busgate.edge import keys

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
MAX_KEY = 255
_KEPT_HEADERS = ("Location", "Content-Type")

Publish = Callable[[str | None], Awaitable[web.Response]]
"""Publishes and answers; gets the store key (usable as a broker message id), or None."""


def fingerprint(*parts: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()


class Idempotency:
    """The keys live in the shared store's ``idempotency`` entries, opened on the first call
    that carries a key: an edge whose callers never send one (no commands, sends or
    ``X-Async`` in use) pays for no store -- on Kafka a producer and a consumer reading the
    topic, on NATS a bucket watch."""

    def __init__(self, bus: Bus, window: float, *, wait: float = 5.0) -> None:
        self.bus = bus
        self.window = window
        self.wait = wait
        self.store: Store[IdempotencyRecord] | None = None
        self._opening = asyncio.Lock()

    async def _open(self) -> Store[IdempotencyRecord]:
        """The store, opened now if it is not yet; BusUnavailable (503) while the bus is
        away, and the next keyed call tries again."""
        async with self._opening:
            if self.store is None:
                store = open_store(self.bus, "idempotency", IdempotencyRecord, max_age=self.window)
                try:
                    await store.start()
                except TimeoutError:
                    await store.close()
                    raise errors.BusUnavailable("the idempotency keys are not readable") from None
                except BaseException:
                    await store.close()
                    raise
                self.store = store
            return self.store

    async def close(self) -> None:
        async with self._opening:
            if self.store is not None:
                await self.store.close()
                self.store = None

    async def run(
        self,
        request: web.Request,
        scope: str,
        identity: Identity | None,
        asked: str,
        publish: Publish,
    ) -> web.Response:
        """``publish`` once per key; ``asked`` is the fingerprint of the call."""
        key = request.headers.get(HEADER)
        if key is None:
            return await publish(None)
        key = key.strip().strip('"')  # the draft sends it as a quoted sf-string
        if not key or len(key) > MAX_KEY:
            raise errors.BadRequest(f"{HEADER} must have 1 to {MAX_KEY} characters")
        who = identity.subject if identity is not None else "anonymous"
        slot = fingerprint(scope, who, key)
        store = self.store or await self._open()
        pending = IdempotencyRecord(fingerprint=asked, created=time.time())
        if await store.create(slot, pending, ttl=self.window) is None:
            return await self._replay(store, slot, asked)
        try:
            response = await publish(slot)
        except BaseException:
            await self._release(store, slot)
            raise
        done = IdempotencyRecord(
            fingerprint=asked,
            status=response.status,
            body=bytes(response.body) if isinstance(response.body, bytes) else b"",
            headers={h: v for h in _KEPT_HEADERS if (v := response.headers.get(h)) is not None},
            created=pending.created,
        )
        # Published and answered; if this write fails, a retry with the key gets a 409.
        with contextlib.suppress(errors.BusUnavailable):
            await store.put(slot, done, ttl=self.window)
        return response

    async def _replay(self, store: Store[IdempotencyRecord], slot: str, asked: str) -> web.Response:
        entry = store.local(slot) or await store.get(slot)
        if entry is not None and entry.value.fingerprint == asked and not entry.value.status:
            # Another call (maybe on another edge) is publishing: wait for its answer.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.wait):
                    await store.wait_until(lambda: _settled(store, slot))
            entry = store.local(slot)
        if entry is None:
            raise errors.Conflict(f"a call with this {HEADER} failed meanwhile; retry it")
        record = entry.value
        if record.fingerprint != asked:
            raise errors.IdempotencyKeyReused(f"this {HEADER} was used for a different request")
        if not record.status:
            raise errors.Conflict(f"a call with this {HEADER} is still in progress")
        response = web.Response(status=record.status, body=record.body)
        response.headers.update(record.headers)
        response.headers[REPLAYED] = "true"
        return response

    async def _release(self, store: Store[IdempotencyRecord], slot: str) -> None:
        with contextlib.suppress(errors.BusUnavailable):
            await store.delete(slot)


def _settled(store: Store[IdempotencyRecord], slot: str) -> bool:
    entry = store.local(slot)
    return entry is None or entry.value.status != 0


async def idempotency_ctx(app: web.Application) -> AsyncIterator[None]:
    """The edge's idempotency keys (their store opens on first use)."""
    idempotency = Idempotency(app[keys.BUS], app[keys.CONFIG].gateway.idempotency_window)
    app[keys.IDEMPOTENCY] = idempotency
    yield
    await idempotency.close()
