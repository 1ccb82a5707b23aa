"""The store on NATS: one JetStream key-value bucket per kind (``PREFIX_KIND``), file-backed,
history 1, its max age the store's ``max_age``.

Every node watches the whole bucket: the watch first delivers the latest value of every key
(``start`` returns once those are in), then every change. Compare-and-set and create are the
bucket's own (the expected last revision of the key's subject); revisions are the stream's
sequence numbers. Per-entry expiry lives in the record (see ``base.Record``): the bucket's
max age is the same for every key, and nats-py's per-message TTL covers only ``create``.

With ``view=False`` there is no watch: ``start`` only opens the bucket, reads go to it.

A restarted server loses the watch's consumer; the client notices only after missed
heartbeats, seconds later, so a guard starts a new watch right after every reconnect — it
also brings in whatever changed during the outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any, Generic

from busgate.bus.store.base import (
    Entry,
    Record,
    Store,
    V,
    check_key,
    decode_or_none,
    encode_record,
    expiry,
)
from busgate.bus.tasks import stop_task
from busgate.contracts.errors import BusUnavailable

log = logging.getLogger("busgate.bus.store.nats")

_WRONG_LAST = (10071, 10164)
"""JetStream's error codes for a wrong expected last sequence."""


def bucket_name(prefix: str, kind: str) -> str:
    return f"{prefix}_{kind}".replace(".", "_").replace("-", "_")


class NatsStore(Store[V], Generic[V]):
    def __init__(
        self,
        nc: Any,
        kind: str,
        value_type: type[V],
        *,
        prefix: str = "busgate",
        max_age: float = 0.0,
        view: bool = True,
    ) -> None:
        super().__init__(kind, value_type, max_age=max_age)
        self.keeps_view = view
        self.nc = nc
        self.bucket = bucket_name(prefix, kind)
        self.kv: Any = None
        self._watcher: Any = None
        self._task: asyncio.Task[None] | None = None
        self._guard: asyncio.Task[None] | None = None

    # -- watching ------------------------------------------------------------------

    async def start(self) -> None:
        from nats.js.api import KeyValueConfig, StorageType
        from nats.js.errors import BadRequestError

        js = self.nc.jetstream()
        config = KeyValueConfig(
            bucket=self.bucket, history=1, ttl=self.max_age or None, storage=StorageType.FILE
        )
        with self._unavailable():
            try:
                self.kv = await js.create_key_value(config)
            except BadRequestError:  # exists with other settings: use it as it is
                self.kv = await js.key_value(self.bucket)
            if not self.keeps_view:
                return
            await self._rewatch()
        self._guard = asyncio.create_task(self._guard_reconnects(), name=f"store-{self.bucket}")

    async def _rewatch(self) -> None:
        """(Re)start the watch; it first delivers the latest value of every key."""
        await self._stop_watch()
        self._watcher = watcher = await self.kv.watchall()
        loaded = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._watch(watcher, loaded))
        await asyncio.wait_for(asyncio.shield(loaded), 10)

    async def _guard_reconnects(self, every: float = 0.25) -> None:
        seen = self.nc.stats["reconnects"]
        while True:
            await asyncio.sleep(every)
            now = self.nc.stats["reconnects"]
            if now == seen or not self.nc.is_connected:
                continue
            try:
                await self._rewatch()
                seen = now
                log.info("store %s: watching again after a reconnect", self.bucket)
            except Exception as exc:  # the server not ready yet: try on the next tick
                log.warning(
                    "store %s: watch not restarted yet: %s", self.bucket, type(exc).__name__
                )

    async def _watch(self, watcher: Any, loaded: asyncio.Future[None]) -> None:
        async for entry in watcher:
            if entry is None:  # the initial values are all in
                if not loaded.done():
                    loaded.set_result(None)
                continue
            revision = int(entry.revision or 0)
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                self._apply(entry.key, None, revision)
                continue
            record = decode_or_none(entry.value, self.kind, entry.key)
            if record is not None:
                self._apply(entry.key, record, revision)
        if not loaded.done():
            loaded.set_result(None)

    def _own_write(self, key: str, record: Record, revision: int) -> None:
        if self.keeps_view:  # without a view, nothing is kept (it would only grow)
            super()._own_write(key, record, revision)

    async def _stop_watch(self) -> None:
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._watcher.stop(), 2)
        await stop_task(self._task)
        self._watcher = self._task = None

    async def close(self) -> None:
        await stop_task(self._guard)
        await self._stop_watch()

    # -- reads and writes ------------------------------------------------------------

    @contextlib.contextmanager
    def _unavailable(self) -> Iterator[None]:
        """NATS failures (JetStream not answering, a restarting server) as a 503."""
        import nats.errors
        from nats.js.errors import KeyValueError

        if not self.nc.is_connected:
            raise BusUnavailable("the NATS connection is down; try again shortly")
        try:
            yield
        except KeyValueError:  # not found, deleted, wrong revision: the caller's business
            raise
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusUnavailable(
                f"the {self.kind} store did not answer: {type(exc).__name__}"
            ) from None

    async def _raw(self, key: str) -> tuple[Record, int] | None:
        from nats.js.errors import KeyDeletedError, KeyNotFoundError

        try:
            with self._unavailable():
                entry = await self.kv.get(check_key(key))
        except (KeyNotFoundError, KeyDeletedError):
            return None
        if not entry.value:
            return None
        record = decode_or_none(entry.value, self.kind, key)
        return None if record is None else (record, int(entry.revision or 0))

    async def get(self, key: str) -> Entry[V] | None:
        found = await self._raw(key)
        if found is None:
            return None
        record, revision = found
        entry = Entry(key, self.codec.decode(record.value), revision, record.expires)
        return entry if entry.live() else None

    async def put(self, key: str, value: V, *, expires: float = 0.0, ttl: float = 0.0) -> int:
        record = self._record(value, expiry(expires, ttl))
        with self._unavailable():
            revision = int(await self.kv.put(check_key(key), encode_record(record)))
        self._own_write(key, record, revision)
        return revision

    async def create(
        self, key: str, value: V, *, expires: float = 0.0, ttl: float = 0.0
    ) -> int | None:
        from nats.js.errors import KeyWrongLastSequenceError

        record = self._record(value, expiry(expires, ttl))
        try:
            with self._unavailable():
                revision = int(await self.kv.create(check_key(key), encode_record(record)))
        except KeyWrongLastSequenceError:
            found = await self._raw(key)  # taken, unless what is there has expired
            if found is None or not found[0].expires or found[0].expires > time.time():
                return None
            return await self._update(key, record, found[1])
        self._own_write(key, record, revision)
        return revision

    async def _update(self, key: str, record: Record, revision: int) -> int | None:
        from nats.js.errors import KeyWrongLastSequenceError

        try:
            with self._unavailable():
                new = int(
                    await self.kv.update(check_key(key), encode_record(record), last=revision)
                )
        except KeyWrongLastSequenceError:
            return None
        self._own_write(key, record, new)
        return new

    async def compare_and_set(
        self, key: str, value: V, revision: int, *, expires: float = 0.0, ttl: float = 0.0
    ) -> int | None:
        return await self._update(key, self._record(value, expiry(expires, ttl)), revision)

    async def delete(self, key: str, *, revision: int = 0) -> bool:
        from nats.js.errors import APIError

        with self._unavailable():
            try:
                await self.kv.delete(check_key(key), last=revision or None)
            except APIError as exc:
                if exc.err_code in _WRONG_LAST:
                    return False
                raise
        current = self._view.get(key)
        if current is not None and (not revision or current.revision <= revision):
            self._set(key, None, revision)
        return True
