"""Request consumption: one consumer group per system, and where new partitions start.

A partition of a request topic without a committed offset (a new group, or the group state
was lost with the broker) starts at the first request produced since this adapter started,
less ``replay_window`` seconds -- not at the start of the topic's history, and not at its
end, which would drop requests sent while the group was still joining. Expired requests are
dropped by the base class anyway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from busgate.bus.kafka.reader import Reader

log = logging.getLogger("busgate.bus.kafka")


class Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Commits before partitions go, positions partitions that come without an offset.

    Those start at the first message produced at or after ``since_ms`` (or at the end when
    there is none), instead of the whole history or only what comes after the join.
    """

    def __init__(
        self,
        reader: Reader,
        since_ms: int,
        timeout: float,
        on_assigned: Callable[[], None] = lambda: None,
    ) -> None:
        self.reader = reader
        self.since_ms = since_ms
        self.timeout = timeout
        self.on_assigned = on_assigned
        self.assigned = asyncio.Event()
        """Set once the first assignment is positioned."""

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        revoked = list(revoked)
        await self.reader.commit()  # no-op when the group forgot us
        self.reader.forget(revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        consumer = self.reader.consumer
        try:
            async with asyncio.timeout(self.timeout):
                fresh = [tp for tp in assigned if await consumer.committed(tp) is None]
                if fresh:
                    found = await consumer.offsets_for_times({tp: self.since_ms for tp in fresh})
                    to_end = []
                    for tp in fresh:
                        hit = found.get(tp)
                        # Kafka answers "no such message" with offset -1 (None here); some
                        # brokers send offset 0 with timestamp -1 instead.
                        if hit is None or hit.timestamp < 0:
                            to_end.append(tp)
                        else:
                            consumer.seek(tp, hit.offset)
                    if to_end:
                        await consumer.seek_to_end(*to_end)
                    log.debug(
                        "kafka: %s: partitions %s had no offset; start at %s (at the end: %s)",
                        self.reader.name,
                        sorted(tp.partition for tp in fresh),
                        {tp.partition: hit for tp, hit in found.items()},
                        sorted(tp.partition for tp in to_end),
                    )
        except (TimeoutError, KafkaError) as exc:
            log.warning(
                "kafka: %s: could not position new partitions (%r); using the reset policy",
                self.reader.name,
                exc,
            )
        finally:
            self.assigned.set()
            self.on_assigned()


async def start_request_reader(
    client: Mapping[str, Any],
    *,
    client_id: str,
    name: str,
    topic: str,
    group: str,
    session_timeout: float,
    hot_ms: int,
    idle_ms: int,
    since_ms: int,
    on_request: Callable[[bytes], None],
    on_assigned: Callable[[], None],
) -> tuple[Reader, Rebalance]:
    """A started group consumer of request topic ``topic`` and its rebalance listener (whose
    ``assigned`` is set once the group join has positioned its partitions)."""
    consumer = AIOKafkaConsumer(
        **client,
        client_id=client_id,
        group_id=group,
        enable_auto_commit=False,  # committed by Reader.commit
        auto_offset_reset="earliest",
        fetch_max_wait_ms=idle_ms,
        fetch_min_bytes=1,
        metadata_max_age_ms=30_000,
        # Kafka's smallest default (group.min.session.timeout.ms): a dead adapter's
        # partitions go to the others after 6 s rather than 10 s.
        session_timeout_ms=int(session_timeout * 1000),
        heartbeat_interval_ms=int(session_timeout * 1000 / 3),
    )

    def on_record(_topic: str, value: bytes) -> None:
        reader.heat()
        on_request(value)

    reader = Reader(name, consumer, on_record, hot_ms=hot_ms, idle_ms=idle_ms, group=True)
    listener = Rebalance(reader, since_ms, timeout=10, on_assigned=on_assigned)
    consumer.subscribe([topic], listener=listener)
    await consumer.start()
    return reader, listener
