"""The store in one process: for an edge without a shared store, and for unit tests.
``max_age`` is not simulated (entries end only by their own expiry).

Several :class:`MemoryStore` objects on one :class:`MemoryBackend` behave like nodes on one
bus (each has its own view, every change reaches all of them), so the contract tests run on
it as on the real buses.
"""

from __future__ import annotations

import time
from typing import Generic

from busgate.bus.store.base import Entry, Record, Store, V, check_key, expiry


class MemoryBackend:
    """The shared part: every kind's records and the stores that watch them."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, tuple[Record, int]]] = {}
        self.revisions: dict[str, int] = {}
        self.stores: dict[str, list[MemoryStore[object]]] = {}

    def write(self, kind: str, key: str, record: Record | None) -> int:
        revision = self.revisions[kind] = self.revisions.get(kind, 0) + 1
        if record is None:
            self.records.setdefault(kind, {}).pop(key, None)
        else:
            self.records.setdefault(kind, {})[key] = (record, revision)
        for store in self.stores.get(kind, []):
            store._apply(key, record, revision)
        return revision


class MemoryStore(Store[V], Generic[V]):
    def __init__(
        self,
        kind: str,
        value_type: type[V],
        *,
        max_age: float = 0.0,
        backend: MemoryBackend | None = None,
    ) -> None:
        super().__init__(kind, value_type, max_age=max_age)
        self.backend = backend or MemoryBackend()

    async def start(self) -> None:
        self.backend.stores.setdefault(self.kind, []).append(self)  # type: ignore[arg-type]
        for key, (record, revision) in self.backend.records.get(self.kind, {}).items():
            self._apply(key, record, revision)

    async def close(self) -> None:
        stores = self.backend.stores.get(self.kind, [])
        if self in stores:
            stores.remove(self)  # type: ignore[arg-type]

    def _current(self, key: str) -> tuple[Record, int] | None:
        found = self.backend.records.get(self.kind, {}).get(check_key(key))
        if found is None:
            return None
        record, revision = found
        if record.expires and record.expires <= time.time():
            return None
        return record, revision

    async def get(self, key: str) -> Entry[V] | None:
        found = self._current(key)
        if found is None:
            return None
        record, revision = found
        return Entry(key, self.codec.decode(record.value), revision, record.expires)

    async def put(self, key: str, value: V, *, expires: float = 0.0, ttl: float = 0.0) -> int:
        return self.backend.write(
            self.kind, check_key(key), self._record(value, expiry(expires, ttl))
        )

    async def create(
        self, key: str, value: V, *, expires: float = 0.0, ttl: float = 0.0
    ) -> int | None:
        if self._current(key) is not None:
            return None
        return await self.put(key, value, expires=expires, ttl=ttl)

    async def compare_and_set(
        self, key: str, value: V, revision: int, *, expires: float = 0.0, ttl: float = 0.0
    ) -> int | None:
        found = self.backend.records.get(self.kind, {}).get(check_key(key))
        if found is None or found[1] != revision:
            return None
        return await self.put(key, value, expires=expires, ttl=ttl)

    async def delete(self, key: str, *, revision: int = 0) -> bool:
        found = self.backend.records.get(self.kind, {}).get(check_key(key))
        if revision and (found is None or found[1] != revision):
            return False
        self.backend.write(self.kind, key, None)
        return True
