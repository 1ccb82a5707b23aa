"""Commands on Kafka: a consumer group per system on the command topic, committing only what
the runner has answered.

Every adapter of system S joins the group ``PREFIX.adapter.S.cmd`` on ``PREFIX.cmd`` (keyed
``SYSTEM.ID``, so commands spread over its partitions) and skips the commands of other
systems. Commands of one partition run concurrently (up to ``concurrency`` per adapter), so
the offset committed for a partition is that of its oldest command still running: whatever
an adapter held when it died is read again by the adapter that gets the partition. Retries
happen here, after the backoff, while the offset stays uncommitted; after a crash the next
adapter continues the count from the command's status (``prior_attempts``).

A new group starts at the beginning of the topic (``earliest``): a command must not be
skipped because its adapters were deployed after it was accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from busgate.bus.commands import (
    CommandConsumer,
    backoff_delay,
    crashed_error,
    dead_letter_bytes,
)
from busgate.bus.kafka.internals import group_member, stop_consumer
from busgate.bus.kafka.transport import KafkaBus
from busgate.bus.tasks import stop_task
from busgate.contracts.errors import BusUnavailable
from busgate.contracts.wire import DeadLetter, Request

log = logging.getLogger("busgate.bus.kafka.commands")


class _Partition:
    """Offsets of one partition: the ones running, and the next after the last read."""

    __slots__ = ("committed", "next", "running")

    def __init__(self) -> None:
        self.running: set[int] = set()
        self.next = -1
        self.committed = -1

    def position(self) -> int:
        """What may be committed: everything below it has been answered."""
        return min(self.running) if self.running else self.next


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, consumer: KafkaCommandConsumer) -> None:
        self.owner = consumer

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.owner._commit()
        for tp in revoked:
            self.owner._partitions.pop(tp, None)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        for tp in assigned:
            self.owner._partitions.setdefault(tp, _Partition())
        self.owner.assigned.set()


class KafkaCommandConsumer(CommandConsumer):
    bus: KafkaBus

    def __init__(self, bus: KafkaBus, *args: Any, **kwargs: Any) -> None:
        super().__init__(bus, *args, **kwargs)
        self.topic = bus.names.command()
        self.dead_topic = f"{self.topic}.dead"
        self._consumer: Any = None
        self._producer: Any = None
        self._partitions: dict[TopicPartition, _Partition] = {}
        self._reader: asyncio.Task[None] | None = None
        self._committer: asyncio.Task[None] | None = None
        self._stopping = False
        self.assigned = asyncio.Event()
        """Set once the group gave this adapter its first partitions."""

    async def start(self) -> None:
        bus = self.bus
        for topic, partitions in ((self.topic, bus.request_partitions), (self.dead_topic, 1)):
            bus._topics.wanted[topic] = partitions
        try:
            await asyncio.wait_for(
                bus._topics.ensure([self.topic, self.dead_topic]), bus.connect_timeout
            )
            self._producer = AIOKafkaProducer(
                **bus.client,
                client_id=f"busgate-{bus.node}-dead",
                acks="all",
                request_timeout_ms=int(bus.command_timeout * 1000),
            )
            await self._producer.start()
            self._consumer = AIOKafkaConsumer(
                **bus.client,
                client_id=f"busgate-{bus.node}-cmd-{self.system}",
                group_id=f"{bus.names.group(self.system)}.cmd",
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                fetch_max_wait_ms=bus.idle_fetch_wait_ms,
                session_timeout_ms=int(bus.session_timeout * 1000),
                heartbeat_interval_ms=int(bus.session_timeout * 1000 / 3),
                max_poll_interval_ms=max(300_000, int(self.ack_wait * 1000)),
            )
            self._consumer.subscribe([self.topic], listener=_Listener(self))
            await self._consumer.start()
        except (KafkaError, OSError, TimeoutError) as exc:
            await self._close()
            raise BusUnavailable(f"cannot consume {self.topic}: {exc!r}") from None
        self._reader = asyncio.create_task(self._read(), name=f"commands-{self.system}")
        self._committer = asyncio.create_task(self._commit_forever(), name="commands-commit")

    async def _read(self) -> None:
        consumer = self._consumer
        failing = False
        while not self._stopping:
            await self._slots.acquire()
            free = 1
            while free < self.concurrency and not self._slots.locked():
                await self._slots.acquire()
                free += 1
            taken = 0
            try:
                batches = await consumer.getmany(timeout_ms=200, max_records=free)
                failing = False
            except KafkaError as exc:
                if not failing:
                    log.warning("commands %s: read failed (%r); retrying", self.system, exc)
                failing = True
                batches = {}
                await asyncio.sleep(0.2)
            for tp, records in batches.items():
                state = self._partitions.setdefault(tp, _Partition())
                for record in records:
                    state.next = record.offset + 1
                    req = self.bus._decode(record.value) if record.value else None
                    if not isinstance(req, Request) or req.system != self.system:
                        continue
                    state.running.add(record.offset)
                    taken += 1
                    self._spawn(self._handle(tp, state, record.offset, req))
            for _ in range(free - taken):
                self._slots.release()

    async def _handle(
        self, tp: TopicPartition, state: _Partition, offset: int, req: Request
    ) -> None:
        try:
            attempt = 1
            if self.prior_attempts is not None:
                attempt = await self.prior_attempts(req.id) + 1
            if attempt > self.max_attempts:  # crashed adapters used up the attempts
                await self._dead(req, attempt - 1, crashed_error())
                return
            while True:
                error = await self._attempt(req, attempt)
                if error is None:
                    return
                if attempt >= self.max_attempts:
                    await self._dead(req, attempt, error)
                    return
                await asyncio.sleep(backoff_delay(attempt, self.backoff, self.max_backoff))
                if self._partitions.get(tp) is not state:
                    return  # the partition went to another adapter, which carries on
                attempt += 1
        except BusUnavailable as exc:
            log.warning("commands %s: %s; leaving %s uncommitted", self.system, exc, req.id)
            # Not marked answered: the offset stays where it is and the command is read
            # again once this adapter restarts or its partition moves.
            return
        finally:
            state.running.discard(offset)
            self._slots.release()

    async def _commit(self) -> None:
        consumer = self._consumer
        if consumer is None or not group_member(consumer):
            return
        due = {
            tp: state.position()
            for tp, state in self._partitions.items()
            if state.position() > state.committed and state.position() >= 0
        }
        if not due:
            return
        try:
            await asyncio.wait_for(consumer.commit(due), 2.0)
        except (TimeoutError, KafkaError) as exc:
            log.debug("commands %s: commit failed: %r", self.system, exc)
            return
        for tp, position in due.items():
            if (state := self._partitions.get(tp)) is not None:
                state.committed = position

    async def _commit_forever(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            await self._commit()

    async def _publish_dead(self, letter: DeadLetter) -> None:
        try:
            delivery = await self._producer.send(
                self.dead_topic, dead_letter_bytes(letter), key=letter.command.id.encode()
            )
            await asyncio.wait_for(delivery, self.bus.command_timeout)
        except (KafkaError, TimeoutError) as exc:
            raise BusUnavailable(f"dead letter not acknowledged: {type(exc).__name__}") from None

    async def _stop_reading(self) -> None:
        self._stopping = True
        await stop_task(self._reader, 2)

    async def _close(self) -> None:
        await stop_task(self._committer, 2)
        await self._commit()
        if self._consumer is not None:
            with contextlib.suppress(KafkaError, OSError, TimeoutError):
                await stop_consumer(self._consumer, 5)
        if self._producer is not None:
            with contextlib.suppress(KafkaError, OSError, TimeoutError):
                await asyncio.wait_for(self._producer.stop(), 5)
        self._consumer = self._producer = None
