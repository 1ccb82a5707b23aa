"""One store on the bus for whatever several nodes must agree on: sessions, command status,
idempotency keys, config revisions, certificates (DESIGN.md, "Shared state").

A store holds entries of one *kind* (``"sessions"``, ``"commands"``, …): string keys
(letters, digits, ``_ = - . /``; use ``.`` to group, e.g. ``subject.<id>.<session>``) to
values of one type — ``bytes``, or any type msgspec encodes (a Struct), stored as
MessagePack. On NATS it is a JetStream key-value bucket ``PREFIX_KIND``; on Kafka a compacted
topic ``PREFIX.KIND`` read by every node; in tests or a lone edge, process memory.

    store = open_store(bus, "commands", CommandStatus, max_age=86_400)
    await store.start()                       # returns once the view holds every entry
    rev = await store.create(key, status, ttl=3600)  # None: the key is taken
    rev = await store.compare_and_set(key, new, rev)  # None: another write came first
    await store.put(key, value)               # unconditional; returns the revision
    entry = await store.get(key)              # Entry(key, value, revision, expires) | None
    await store.delete(key, revision=rev)     # False: a conditional delete lost
    store.local(key) / store.value(key)       # the local view: no I/O, always current
    store.items("prefix.")                    # live entries by key prefix (a scan)
    unwatch = store.watch(callback)           # Change(key, entry | None, revision)
    async for change in store.changes(): …
    async with asyncio.timeout(1): await store.wait_until(lambda: …)
    await store.close()

    open_store(bus, "commands", CommandStatus, view=False)  # NATS: no view, reads on demand

Semantics, the same on every bus (``tests/bus/test_store.py`` checks them on each):

- Revisions increase with every write to the store (NATS: the stream sequence; Kafka: the
  offset + 1; never 0). Of racing ``create``s or ``compare_and_set``s on one key exactly
  one wins.
- Writes return once the store took them; the writer's own view has them at once. Other
  nodes' views follow by watching (milliseconds; the contract test prints the figure).
- Expiry is per entry: ``expires`` (epoch seconds) or ``ttl`` on a write. An expired entry
  is absent for ``get``, ``local``, ``items`` and ``create``; the view forgets it at the
  next ``prune`` (plus a margin), and the bus drops it after ``max_age`` (the bucket's max
  age / the topic's retention since its last write; 0 = never), which should be at least
  the longest expiry you give. Chosen over NATS' per-message TTL, which nats-py offers for
  ``create`` only, and which Kafka lacks: one rule on both buses.
- Bus failures raise ``BusUnavailable`` (503). A NATS server restart: the watch is renewed
  right after the reconnect and brings in what changed. A Kafka broker restart with its log
  kept changes nothing; a broker that lost its log (Tansu's memory storage) gets the
  running nodes' views written back (see ``bus.store.kafka``).
- ``view=False`` (an option for NATS): no local view and no watch, ``get`` and the writes
  only. For a node that only reads single keys now and then while the fleet writes many:
  with a view, every write of every node lands on it. The view's methods (``local``,
  ``items``, ``watch``, ``wait_until``) then see nothing, not even this node's writes. A Kafka store
  answers ``get`` from its view, so it always keeps one; so does the memory store.

Bus clients stay inside ``bus/``: callers see only this interface.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from busgate.bus.store.base import Change, Entry, Store, StoreError, V
from busgate.bus.store.memory import MemoryBackend, MemoryStore

if TYPE_CHECKING:
    from busgate.bus.base import Bus


def open_store(
    bus: Bus | None,
    kind: str,
    value_type: type[V],
    *,
    max_age: float = 0.0,
    backend: MemoryBackend | None = None,
    view: bool = True,
) -> Store[V]:
    """The store of ``kind`` on ``bus`` (not started): a bucket on a NATS bus (its
    connection), a topic on a Kafka bus (its servers, prefix and replication), process memory
    for any other bus or none (``backend`` shares it between stores, as nodes on one bus).
    ``view=False``: on NATS, no local view kept by watching (see above); elsewhere ignored."""
    from busgate.bus.nats import NatsBus

    if isinstance(bus, NatsBus):
        from busgate.bus.store.nats import NatsStore

        return NatsStore(
            bus.nc, kind, value_type, prefix=bus.names.prefix, max_age=max_age, view=view
        )
    try:
        from busgate.bus.kafka import KafkaBus
    except ImportError:  # pragma: no cover - without the kafka extra
        KafkaBus = None  # type: ignore[assignment,misc]
    if KafkaBus is not None and isinstance(bus, KafkaBus):
        from busgate.bus.store.kafka import KafkaStore

        return KafkaStore(
            bus.servers,
            kind,
            value_type,
            prefix=bus.names.prefix,
            max_age=max_age,
            replication=bus.replication_factor,
            tls=bus.tls,
        )
    return MemoryStore(kind, value_type, max_age=max_age, backend=backend)


__all__ = ["Change", "Entry", "MemoryBackend", "MemoryStore", "Store", "StoreError", "open_store"]
