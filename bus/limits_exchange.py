"""Rate-limit counts exchanged between edge nodes: ``PREFIX.limits`` (NATS subject, Kafka
topic). No Redis, no database: each edge publishes its own counts of the current windows
every ``sync_interval`` and keeps what the others published (``edge.rate_limit``).

A report carries absolute counts, not increments, so a lost or repeated report is healed
by the next one (the bus delivers at most once). An edge that stops says ``bye``.
(``bus.limits`` is another matter: the message sizes the bus carries.)
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import msgspec

from busgate.bus.base import Bus
from busgate.bus.naming import Names

log = logging.getLogger("busgate.bus.limits")


class Counts(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One edge's counts: key -> (window index, calls admitted in it)."""

    v: int = 1
    node: str
    counts: dict[str, tuple[int, int]] = {}
    seq: int = 0
    """This report's number, counting from 1 per edge process."""
    seen: dict[str, int] = {}
    """node -> the number of the last report heard from it."""
    full: bool = True
    """All of the edge's counts (replacing what it said before), or only changed ones."""
    bye: bool = False


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Counts).decode

OnCounts = Callable[[Counts], None]


def subject(names: Names) -> str:
    return f"{names.prefix}.limits"


class Exchange(abc.ABC):
    def __init__(self, node: str, on_counts: OnCounts) -> None:
        self.node = node
        self.on_counts = on_counts

    def _received(self, data: bytes) -> None:
        try:
            counts = _decode(data)
        except msgspec.DecodeError:
            return
        if counts.node != self.node:
            self.on_counts(counts)

    async def publish(self, counts: Counts) -> None:
        try:
            await self._publish(_encode(counts))
        except Exception as exc:  # the bus is down: the next round tries again
            log.debug("limits: report not sent: %r", exc)

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def _publish(self, data: bytes) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...


class NatsExchange(Exchange):
    def __init__(self, nc: Any, names: Names, node: str, on_counts: OnCounts) -> None:
        super().__init__(node, on_counts)
        self.nc = nc
        self.subject = subject(names)
        self._sub: Any = None

    async def start(self) -> None:
        async def on_msg(msg: Any) -> None:
            self._received(msg.data)

        self._sub = await self.nc.subscribe(self.subject, cb=on_msg)

    async def _publish(self, data: bytes) -> None:
        if self.nc.is_connected:
            await self.nc.publish(self.subject, data)

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None


class KafkaExchange(Exchange):
    """One partition, read by every edge from its end without a group (each edge sees every
    report), written by a producer of its own with ``acks=1`` and no linger."""

    def __init__(
        self, client: dict[str, Any], names: Names, node: str, on_counts: OnCounts
    ) -> None:
        """``client``: the aiokafka connection arguments (``KafkaBus.client``)."""
        super().__init__(node, on_counts)
        self.client = client
        self.topic = subject(names)
        self._producer: Any = None
        self._consumer: Any = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

        from busgate.bus.kafka.admin import ensure_topic

        await ensure_topic(self.client, self.topic, 1, {"retention.ms": "60000"})
        self._producer = AIOKafkaProducer(**self.client, acks=1, linger_ms=0)
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            **self.client,
            enable_auto_commit=False,
            fetch_max_wait_ms=20,
        )
        await self._consumer.start()
        tp = TopicPartition(self.topic, 0)
        self._consumer.assign([tp])
        await self._consumer.seek_to_end(tp)
        self._reader = asyncio.create_task(self._read(), name=f"limits-{self.node}")

    async def _read(self) -> None:
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=200)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker away: keep trying, counts heal on the next
                log.debug("limits: read failed: %r", exc)
                await asyncio.sleep(0.5)
                continue
            for records in batches.values():
                for record in records:
                    self._received(record.value)

    async def _publish(self, data: bytes) -> None:
        await self._producer.send(self.topic, data)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._consumer is not None:
            from busgate.bus.kafka.internals import stop_consumer

            # aiokafka's stop() may hand a stray CancelledError on (see stop_consumer).
            with contextlib.suppress(Exception):
                await stop_consumer(self._consumer, 5)
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._producer.stop(), 5)
        self._consumer = self._producer = None


def open_exchange(bus: Bus, url: str, on_counts: OnCounts) -> Exchange | None:
    """The exchange for ``bus`` (NATS: its connection; Kafka: clients of its own); None for
    a bus that is neither (an in-memory one in tests: nothing to share with)."""
    from busgate.bus import parse_url

    scheme, _, _ = parse_url(url)
    nc = getattr(bus, "nc", None)
    if scheme == "nats" and nc is not None:
        return NatsExchange(nc, bus.names, bus.node, on_counts)
    client = getattr(bus, "client", None)  # a KafkaBus's connection arguments
    if scheme == "kafka" and client is not None:
        return KafkaExchange(client, bus.names, bus.node, on_counts)
    return None
