"""The store on Kafka: one compacted topic per kind (``PREFIX.KIND``, one partition), read
from its beginning by every node without a consumer group.

The log's order is the arbiter. A conditional write (create, compare-and-set, conditional
delete) carries what it was based on (``Record.prev``), and every reader applies it, in log
order, only if that still holds — so all nodes reach the same verdict, and the writer learns
it by reading its own record back (``_write`` returns once it has). Whether a create over an
expired entry may proceed is judged by the record's timestamp, not the reader's clock, for
the same reason. Revisions are offsets + 1.

Retention: ``cleanup.policy=compact`` keeps the latest record of each key; with ``max_age``
also ``delete`` after that many seconds, so ended entries do not pile up.

A broker that loses its log (Tansu with memory storage, used in the tests; never a real
Kafka cluster with replication) is noticed when the partition's end falls below this
node's position. The node then reads the new log from its beginning, and writes the live
entries of its view back, so what any running node knew survives; revisions start over,
so a compare-and-set based on a revision from before the loss fails (it is reported as
lost, never applied wrongly).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Generic

from busgate.bus.security import BusTls, kafka_client
from busgate.bus.store.base import (
    CREATE,
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

log = logging.getLogger("busgate.bus.store.kafka")


class KafkaStore(Store[V], Generic[V]):
    def __init__(
        self,
        servers: str,
        kind: str,
        value_type: type[V],
        *,
        prefix: str = "busgate",
        max_age: float = 0.0,
        replication: int | None = None,
        read_back_timeout: float = 10.0,
        tls: BusTls | None = None,
    ) -> None:
        """``replication`` of the topic, if it is created here: by default the number of
        brokers, at most 3 (as for the bus's own topics). ``tls``: the bus's (``kafka+ssl``)."""
        super().__init__(kind, value_type, max_age=max_age)
        self.servers = servers
        self.client = kafka_client(servers, tls)
        self.replication = replication
        self.topic = f"{prefix}.{kind}"
        self.read_back_timeout = read_back_timeout
        self._producer: Any = None
        self._consumer: Any = None
        self._partition: Any = None
        self._task: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[None] | None = None
        self._position = 0
        self._waiters: dict[int, asyncio.Future[bool]] = {}
        self._settled: dict[int, bool] = {}
        """Recent offsets and whether they applied, for a writer that reads its record back
        before ``send_and_wait`` returned."""
        self.log_losses = 0
        """How often the log was found shorter than what this node had read."""

    async def _ensure_topic(self) -> None:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        from aiokafka.errors import TopicAlreadyExistsError

        from busgate.bus.kafka.transport import default_replication

        admin = AIOKafkaAdminClient(**self.client)
        await admin.start()
        try:
            configs = {"cleanup.policy": "compact"}
            if self.max_age:
                configs = {
                    "cleanup.policy": "compact,delete",
                    "retention.ms": str(int(self.max_age * 1000)),
                }
            topic = NewTopic(
                self.topic,
                num_partitions=1,
                replication_factor=self.replication or await default_replication(admin),
                topic_configs=configs,
            )
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([topic])
        finally:
            await admin.close()

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
        from aiokafka.errors import KafkaError

        try:
            await self._ensure_topic()
            self._producer = AIOKafkaProducer(**self.client, acks="all", linger_ms=0)
            await self._producer.start()
            self._consumer = AIOKafkaConsumer(
                **self.client,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                fetch_max_wait_ms=50,
            )
            await self._consumer.start()
            self._partition = partition = TopicPartition(self.topic, 0)
            self._consumer.assign([partition])
            await self._consumer.seek_to_beginning(partition)
            end = (await self._consumer.end_offsets([partition]))[partition]
        except (KafkaError, OSError) as exc:
            await self.close()
            raise BusUnavailable(f"the {self.kind} store is not reachable: {exc!r}") from None
        loaded = asyncio.get_running_loop().create_future()
        if end == 0:
            loaded.set_result(True)
        else:
            self._waiters[end - 1] = loaded
        self._task = asyncio.create_task(self._read(), name=f"store-{self.topic}")
        await asyncio.wait_for(asyncio.shield(loaded), 30)

    # -- reading -------------------------------------------------------------------

    async def _read(self) -> None:
        from aiokafka.errors import KafkaError

        consumer, partition = self._consumer, self._partition
        failing = False
        while True:
            try:
                batches = await consumer.getmany(partition, timeout_ms=500)
            except KafkaError as exc:  # the broker restarting; aiokafka reconnects
                if not failing:
                    log.warning("store %s: read failed: %s", self.topic, type(exc).__name__)
                failing = True
                await asyncio.sleep(0.2)
                continue
            failing = False
            for record in batches.get(partition, []):
                self._on_record(record.key, record.value, record.offset, record.timestamp)
            highwater = consumer.highwater(partition)
            if highwater is not None and highwater < self._position:
                await self._log_lost(highwater)

    def _on_record(self, key: bytes | None, value: bytes | None, offset: int, ts: int) -> None:
        self._position = offset + 1
        applied = False
        if key is not None:
            applied = self._settle(key.decode(), value, offset + 1, ts / 1000)
        self._settled[offset] = applied
        if len(self._settled) > 4096:
            del self._settled[next(iter(self._settled))]
        for waited in [o for o in self._waiters if o < self._position]:
            fut = self._waiters.pop(waited)
            if not fut.done():
                fut.set_result(applied if waited == offset else True)

    def _settle(self, key: str, value: bytes | None, revision: int, at: float) -> bool:
        """Apply one record if its condition holds; whether it did."""
        if value is None:  # a tombstone: unconditional delete
            self._apply(key, None, revision)
            return True
        record = decode_or_none(value, self.kind, key)
        if record is None:
            return False
        current = self._view.get(key)
        prev = record.prev
        if prev == CREATE:
            ok = current is None or not current.live(at)
        elif prev > 0:
            ok = current is not None and current.revision == prev
        else:
            ok = True
        if not ok:
            self._seen = max(self._seen, revision)
            return False
        self._apply(key, record, revision)
        return True

    async def _log_lost(self, highwater: int) -> None:
        """The log ends below what we read: the broker lost it (see the module docstring)."""
        self.log_losses += 1
        log.warning(
            "store %s: the log ends at %d, below our position %d (the broker lost it); "
            "reading it again and writing back the %d entries we know",
            self.topic,
            highwater,
            self._position,
            len(self._view),
        )
        live = [e for e in self._view.values() if e.live()]
        for entry in live:  # revisions from before the loss mean nothing now
            self._view[entry.key] = Entry(entry.key, entry.value, 0, entry.expires)
        self._position = self._seen = 0
        self._settled.clear()
        for fut in self._waiters.values():  # their offsets were in the lost log
            if not fut.done():
                fut.set_exception(BusUnavailable(f"the {self.kind} log was lost; try again"))
        self._waiters.clear()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._consumer.seek_to_beginning(self._partition), 2)
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.create_task(self._write_back(live))

    async def _write_back(self, entries: list[Entry[V]]) -> None:
        with contextlib.suppress(Exception):
            await self._ensure_topic()
        for entry in entries:
            try:
                await self._send(entry.key, encode_record(self._record(entry.value, entry.expires)))
            except BusUnavailable as exc:
                log.warning("store %s: entry %s not written back: %s", self.topic, entry.key, exc)

    # -- writing -------------------------------------------------------------------

    async def _send(self, key: str, data: bytes | None) -> int:
        """Produce one record; its offset."""
        from aiokafka.errors import KafkaError

        if self._producer is None:
            raise BusUnavailable(f"the {self.kind} store is not started")
        try:
            meta = await self._producer.send_and_wait(
                self.topic, key=check_key(key).encode(), value=data, partition=0
            )
        except KafkaError as exc:
            raise BusUnavailable(
                f"Kafka did not take the {self.kind} entry: {type(exc).__name__}"
            ) from None
        return int(meta.offset)

    async def _write(self, key: str, data: bytes | None) -> int | None:
        """Produce, then read it back: its revision if it applied, else None."""
        offset = await self._send(key, data)
        if offset < self._position:  # already read back (and settled)
            return offset + 1 if self._settled.get(offset, False) else None
        fut = self._waiters.setdefault(offset, asyncio.get_running_loop().create_future())
        try:
            applied = await asyncio.wait_for(asyncio.shield(fut), self.read_back_timeout)
        except TimeoutError:
            raise BusUnavailable(
                f"the {self.kind} entry was written but not read back in time"
            ) from None
        return offset + 1 if applied else None

    async def get(self, key: str) -> Entry[V] | None:
        return self.local(check_key(key))

    async def put(self, key: str, value: V, *, expires: float = 0.0, ttl: float = 0.0) -> int:
        revision = await self._write(key, encode_record(self._record(value, expiry(expires, ttl))))
        assert revision is not None  # an unconditional write always applies
        return revision

    async def create(
        self, key: str, value: V, *, expires: float = 0.0, ttl: float = 0.0
    ) -> int | None:
        if self.local(key) is not None:
            return None  # a live entry is there already: no need to ask the log
        record = self._record(value, expiry(expires, ttl), prev=CREATE)
        return await self._write(key, encode_record(record))

    async def compare_and_set(
        self, key: str, value: V, revision: int, *, expires: float = 0.0, ttl: float = 0.0
    ) -> int | None:
        if revision <= 0:
            return None
        record = self._record(value, expiry(expires, ttl), prev=revision)
        return await self._write(key, encode_record(record))

    async def delete(self, key: str, *, revision: int = 0) -> bool:
        if not revision:
            await self._write(key, None)
            return True
        record = Record(deleted=True, prev=revision)
        return await self._write(key, encode_record(record)) is not None

    async def close(self) -> None:
        await stop_task(self._recovery)
        await stop_task(self._task)
        from busgate.bus.kafka.internals import stop_consumer

        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await stop_consumer(self._consumer, 5)
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._producer.stop(), 5)
        self._consumer = self._producer = None
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(BusUnavailable(f"the {self.kind} store closed"))
        self._waiters.clear()
