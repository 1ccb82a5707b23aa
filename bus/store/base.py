"""The store's interface, its wire record, and what every implementation shares: the local
view, watch callbacks and waiting for a condition.

See the package docstring (``busgate.bus.store``) for how to use it.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Generic, TypeVar, cast

import msgspec

log = logging.getLogger("busgate.bus.store")

V = TypeVar("V")

KIND = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
"""A kind names a bucket / topic: lowercase, digits and ``_``."""
KEY = re.compile(r"^[A-Za-z0-9_=-][A-Za-z0-9_=./-]{0,254}$")
"""What both buses accept as a key (NATS KV's alphabet, no leading dot; ``/`` is allowed)."""

PRUNE_MARGIN = 300.0
"""Seconds past its expiry before an entry leaves the local view. Kafka settles a create over
an expired entry by the record's timestamp on every node alike; a node whose clock runs ahead
must not have forgotten the entry earlier than the others would judge it expired."""


class Record(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What is stored under a key (MessagePack; unknown fields tolerated, so a newer node
    may add some): the encoded value and its expiry.

    ``prev`` is Kafka's: the revision a conditional write was based on (0 = unconditional,
    ``CREATE`` = only if absent or expired); every reader applies the record, in log order,
    only if that still holds, so all nodes reach the same verdict."""

    v: int = 1
    value: bytes = b""
    expires: float = 0.0
    """Seconds since the epoch; 0 = never."""
    prev: int = 0
    deleted: bool = False
    """A conditional delete (Kafka; an unconditional one is a tombstone)."""


CREATE = -1
encode_record = msgspec.msgpack.Encoder().encode
decode_record = msgspec.msgpack.Decoder(Record).decode


class Codec(Generic[V]):
    """Values as bytes: ``bytes`` as they are, anything else msgspec knows as MessagePack."""

    def __init__(self, value_type: type[V]) -> None:
        self.value_type = value_type
        self._raw = value_type is bytes
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder: msgspec.msgpack.Decoder[V] = msgspec.msgpack.Decoder(value_type)

    def encode(self, value: V) -> bytes:
        if self._raw:
            return cast(bytes, value)
        return self._encoder.encode(value)

    def decode(self, data: bytes) -> V:
        if self._raw:
            return cast(V, bytes(data))
        return self._decoder.decode(data)


@dataclass(frozen=True, slots=True)
class Entry(Generic[V]):
    """A key's value as of ``revision`` (increasing per store; 0 = not from the store)."""

    key: str
    value: V
    revision: int
    expires: float = 0.0

    def live(self, now: float | None = None) -> bool:
        return not self.expires or self.expires > (time.time() if now is None else now)


@dataclass(frozen=True, slots=True)
class Change(Generic[V]):
    """One change that reached the local view: ``entry`` is None when the key was deleted
    (or pruned from the view after its expiry)."""

    key: str
    entry: Entry[V] | None
    revision: int


Callback = Callable[[Change[V]], None]


class StoreError(Exception):
    """A key or value the store cannot hold (a programming error, not a bus failure)."""


def check_key(key: str) -> str:
    if not KEY.match(key) or key.endswith("."):
        raise StoreError(f"invalid store key {key!r}: letters, digits and _ = - . / only")
    return key


def expiry(expires: float, ttl: float) -> float:
    if ttl:
        return time.time() + ttl
    return expires


class Store(abc.ABC, Generic[V]):
    """Shared key → value entries of one kind, with an always-current local view.

    Reads of the view never do I/O; writes go to the bus and return once the store took
    them (and, on Kafka, once this node read them back). Bus failures raise
    :class:`busgate.contracts.errors.BusUnavailable` (a 503 at the edge).
    """

    def __init__(self, kind: str, value_type: type[V], *, max_age: float = 0.0) -> None:
        if not KIND.match(kind):
            raise StoreError(f"invalid store kind {kind!r}: lowercase letters, digits and _")
        self.kind = kind
        self.codec = Codec(value_type)
        self.max_age = max_age
        """Seconds an entry is kept after its last write, whatever its own expiry (the
        bucket's max age / the topic's retention); 0 = no limit."""
        self._view: dict[str, Entry[V]] = {}
        self._proxy = MappingProxyType(self._view)
        self._callbacks: list[Callback[V]] = []
        self._changed = asyncio.Event()
        self._seen = 0
        """The highest revision read from the bus (revisions are ordered per store)."""
        self.applied = 0
        """Changes applied to the local view (for status and tests)."""

    # -- the local view (no I/O) ---------------------------------------------------------

    @property
    def view(self) -> Mapping[str, Entry[V]]:
        """Every entry this node knows, expired ones too until pruned (see :meth:`local`)."""
        return self._proxy

    def local(self, key: str, now: float | None = None) -> Entry[V] | None:
        """The key's entry in the local view, if it has not expired."""
        entry = self._view.get(key)
        if entry is None or (entry.expires and not entry.live(now)):
            return None
        return entry

    def value(self, key: str) -> V | None:
        entry = self.local(key)
        return entry.value if entry is not None else None

    def items(self, prefix: str = "", now: float | None = None) -> Iterator[Entry[V]]:
        """The live entries whose key starts with ``prefix`` (a scan of the view)."""
        now = time.time() if now is None else now
        for key, entry in list(self._view.items()):
            if key.startswith(prefix) and entry.live(now):
                yield entry

    def watch(self, callback: Callback[V]) -> Callable[[], None]:
        """Call ``callback`` for every change that reaches the view from now on (on the
        event loop; it must not block). Returns the function that stops it."""
        self._callbacks.append(callback)

        def unwatch() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unwatch

    async def changes(self) -> AsyncIterator[Change[V]]:
        """The changes that reach the view from now on, as an async iterator."""
        queue: asyncio.Queue[Change[V]] = asyncio.Queue()
        unwatch = self.watch(queue.put_nowait)
        try:
            while True:
                yield await queue.get()
        finally:
            unwatch()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Until ``condition()`` holds, checked after each change to the view (callers
        bound the wait with ``asyncio.timeout``)."""
        while not condition():
            changed = self._changed
            await changed.wait()

    def prune(self, now: float | None = None, margin: float = PRUNE_MARGIN) -> int:
        """Forget entries that expired more than ``margin`` seconds ago (the bus drops them
        after ``max_age``; this keeps the view from growing meanwhile)."""
        cutoff = (time.time() if now is None else now) - margin
        gone = [k for k, e in self._view.items() if e.expires and e.expires <= cutoff]
        for key in gone:
            self._set(key, None, self._view[key].revision)
        return len(gone)

    def _set(self, key: str, entry: Entry[V] | None, revision: int) -> None:
        """Change the view and tell the watchers."""
        if entry is None:
            if self._view.pop(key, None) is None:
                return
        else:
            self._view[key] = entry
        self.applied += 1
        change = Change(key, entry, revision)
        for callback in list(self._callbacks):
            try:
                callback(change)
            except Exception:
                log.exception("store %s: a watch callback failed", self.kind)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _apply(self, key: str, record: Record | None, revision: int) -> Entry[V] | None:
        """A record read from the bus (None = deleted) into the view."""
        self._seen = max(self._seen, revision)
        current = self._view.get(key)
        if current is not None and current.revision >= revision:
            return current  # our own write, put into the view before the bus brought it
        if record is None or record.deleted:
            self._set(key, None, revision)
            return None
        try:
            value = self.codec.decode(record.value)
        except msgspec.DecodeError:
            log.warning("store %s: undecodable value for key %s; ignored", self.kind, key)
            return None
        entry = Entry(key, value, revision, record.expires)
        self._set(key, entry, revision)
        return entry

    def _record(self, value: V, expires: float, prev: int = 0) -> Record:
        return Record(value=self.codec.encode(value), expires=expires, prev=prev)

    # -- what an implementation provides ---------------------------------------------

    @abc.abstractmethod
    async def start(self) -> None:
        """Load every entry into the view and keep watching; returns once loaded."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def get(self, key: str) -> Entry[V] | None:
        """The key's latest entry in the shared store (None if absent or expired). On NATS
        a read from the bucket; on Kafka the view (every write is read back before it
        returns, so a node sees its own writes)."""

    @abc.abstractmethod
    async def put(self, key: str, value: V, *, expires: float = 0.0, ttl: float = 0.0) -> int:
        """Store unconditionally; returns the new revision. ``expires`` (seconds since the
        epoch) or ``ttl`` (seconds from now) ends the entry: after it, reads treat it as
        absent and ``create`` may take the key again."""

    @abc.abstractmethod
    async def create(
        self, key: str, value: V, *, expires: float = 0.0, ttl: float = 0.0
    ) -> int | None:
        """Store only if the key is absent (or expired); the new revision, or None if a
        live entry is there (exactly one of racing creators wins)."""

    @abc.abstractmethod
    async def compare_and_set(
        self, key: str, value: V, revision: int, *, expires: float = 0.0, ttl: float = 0.0
    ) -> int | None:
        """Store only if ``revision`` is still the key's latest; the new revision, or None
        if another write came first (exactly one of racing writers wins)."""

    @abc.abstractmethod
    async def delete(self, key: str, *, revision: int = 0) -> bool:
        """Delete the key (only if ``revision`` is still its latest, when given); False if
        a conditional delete lost."""

    def _own_write(self, key: str, record: Record, revision: int) -> None:
        """A write this node made: into its own view at once, whatever the watch's latency
        (unless the watch already brought something newer)."""
        current = self._view.get(key)
        if revision > self._seen and (current is None or current.revision < revision):
            seen = self._seen
            self._apply(key, record, revision)
            self._seen = seen  # the bus's own reading goes on from where it was


def decode_or_none(data: bytes, kind: str, key: str) -> Record | None:
    try:
        return decode_record(data)
    except msgspec.DecodeError:
        log.warning("store %s: undecodable record for key %s; ignored", kind, key)
        return None


__all__: list[str] = [
    "CREATE",
    "Callback",
    "Change",
    "Codec",
    "Entry",
    "Record",
    "Store",
    "StoreError",
    "check_key",
    "decode_or_none",
    "expiry",
]
