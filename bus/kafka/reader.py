"""One consumer and the task that feeds its records on; seeking helpers shared by readers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from busgate.bus.kafka.internals import group_member, set_fetch_wait, stop_consumer
from busgate.bus.tasks import stop_task

log = logging.getLogger("busgate.bus.kafka")

OnRecord = Callable[[str, bytes], None]


class Reader:
    """One aiokafka consumer and the task that feeds its records to ``on_record``.

    For a group consumer (``group=True``) it also keeps the offsets of what it handed on and
    commits them (``commit``) -- aiokafka's auto-commit is off, see
    :func:`busgate.bus.kafka.internals.group_member`.
    """

    def __init__(
        self,
        name: str,
        consumer: Any,
        on_record: OnRecord,
        *,
        hot_ms: int,
        idle_ms: int,
        group: bool = False,
    ) -> None:
        self.name = name
        self.consumer = consumer
        self.on_record = on_record
        self.hot_ms = hot_ms
        self.idle_ms = idle_ms
        self.wait_ms = idle_ms
        self.group = group
        self.last_active = 0.0
        self.task: asyncio.Task[None] | None = None
        self.stopping = False
        self.consumed: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int] = {}

    def start(self) -> None:
        self.task = asyncio.create_task(self._read(), name=f"kafka-read-{self.name}")

    @property
    def alive(self) -> bool:
        return self.task is not None and not self.task.done()

    def heat(self) -> None:
        """Busy: fetch with the short wait from the next fetch on."""
        self.last_active = time.monotonic()
        if self.wait_ms != self.hot_ms:
            self.wait_ms = self.hot_ms
            set_fetch_wait(self.consumer, self.hot_ms)

    def cool(self, now: float, window: float) -> None:
        if self.wait_ms != self.idle_ms and now - self.last_active > window:
            self.wait_ms = self.idle_ms
            set_fetch_wait(self.consumer, self.idle_ms)

    async def _read(self) -> None:
        consumer = self.consumer
        failing = False
        checked = 0.0
        while not self.stopping:
            try:
                batches = await consumer.getmany(timeout_ms=100)
            except KafkaError as exc:
                if not failing:
                    log.warning("kafka: %s: read failed (%r); retrying", self.name, exc)
                failing = True
                await asyncio.sleep(0.2)
                continue
            failing = False
            for tp, records in batches.items():
                for record in records:
                    if record.value is None:
                        continue
                    try:
                        self.on_record(tp.topic, record.value)
                    except Exception:
                        log.exception("kafka: %s: record from %s not handled", self.name, tp)
                if self.group and records:
                    self.consumed[tp] = records[-1].offset + 1
            now = time.monotonic()
            if now - checked >= 0.1:
                checked = now
                await self._rewind_recreated()

    async def _rewind_recreated(self) -> None:
        """Read from the beginning the partitions whose log now ends below our position.

        Every fetch response carries the partition's high watermark, and a position never
        exceeds it -- unless the topic was deleted and recreated (a broker that lost its
        data): a real Kafka broker then answers OFFSET_OUT_OF_RANGE and aiokafka resets the
        position itself, but not every Kafka-protocol broker does. Checked often, so little
        can land in the new log below the stale position before it is noticed.
        """
        consumer = self.consumer
        behind = []
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            try:
                position = await asyncio.wait_for(consumer.position(tp), 0.05)
            except (TimeoutError, KafkaError):
                continue
            if position > highwater:
                behind.append(tp)
        if behind:
            log.warning(
                "kafka: %s: %s now end below our position (topic recreated?); "
                "reading them from the beginning",
                self.name,
                ", ".join(f"{tp.topic}[{tp.partition}]" for tp in behind),
            )
            for tp in behind:
                self.consumed.pop(tp, None)
            with contextlib.suppress(TimeoutError, KafkaError):
                await asyncio.wait_for(consumer.seek_to_beginning(*behind), 2.0)

    async def commit(self) -> None:
        """Commit the offsets handed on since the last commit (group consumers only)."""
        due = {tp: n for tp, n in self.consumed.items() if self.committed.get(tp) != n}
        if not due or not group_member(self.consumer):
            return
        try:
            await asyncio.wait_for(self.consumer.commit(due), 2.0)
        except (TimeoutError, KafkaError) as exc:
            log.debug("kafka: %s: commit failed: %r", self.name, exc)
            return
        self.committed.update(due)

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            self.consumed.pop(tp, None)
            self.committed.pop(tp, None)

    async def stop(self, grace: float) -> None:
        # The flag as well as the cancel: on Python 3.11 ``asyncio.wait_for`` can swallow a
        # cancellation that lands just as its inner call completes, and the read loop would
        # go on for ever; a bounded wait keeps close() from hanging on it either way.
        self.stopping = True
        await stop_task(self.task, grace)
        if self.group:
            await self.commit()
        try:
            await stop_consumer(self.consumer, grace)
        except (TimeoutError, KafkaError, OSError) as exc:
            log.warning("kafka: %s: consumer did not stop cleanly: %r", self.name, exc)


async def seek(
    consumer: Any,
    tps: set[TopicPartition],
    positions: dict[TopicPartition, int],
    *,
    new_at_end: bool,
) -> None:
    """Seek known partitions to ``positions``, the others to their end or beginning."""
    for tp, offset in positions.items():
        if tp in tps:
            consumer.seek(tp, offset)
    new = [tp for tp in tps if tp not in positions]
    if new:
        if new_at_end:
            await consumer.seek_to_end(*new)
        else:
            await consumer.seek_to_beginning(*new)


async def positions(consumer: Any, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
    """The current positions of ``tps`` (those that answer within half a second)."""
    found: dict[TopicPartition, int] = {}
    for tp in tps:
        try:
            found[tp] = await asyncio.wait_for(consumer.position(tp), 0.5)
        except (TimeoutError, KafkaError):
            continue
    return found
