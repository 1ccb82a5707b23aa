"""The reply and control reader of a node: no group, all partitions, starting at the end.

Every node reads its reply topic and the control topic with one consumer *without* a group:
it assigns itself all their partitions and starts at the end, so there is no group join to
wait for and no offsets to commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from busgate.bus.kafka.reader import OnRecord, Reader, positions, seek

log = logging.getLogger("busgate.bus.kafka")

PRESENCE_REPLAY = 6.0
"""Seconds of control messages a starting node reads back (one presence TTL)."""


def node_partitions(topics: tuple[str, ...], counts: dict[str, int]) -> set[TopicPartition]:
    """All partitions of ``topics`` (one for a topic whose count is not known yet)."""
    return {TopicPartition(topic, p) for topic in topics for p in range(counts.get(topic, 1))}


async def start_node_reader(
    client: Mapping[str, Any],
    *,
    client_id: str,
    tps: set[TopicPartition],
    control: str,
    on_record: OnRecord,
    on_control: Callable[[bytes], None],
    hot_ms: int,
    idle_ms: int,
    positions: dict[TopicPartition, int] | None = None,
) -> Reader:
    """A reader (not yet started) assigned ``tps``: at ``positions`` when a reader is being
    replaced, else at the end, with the control topic replayed (see
    :func:`replay_recent_control`)."""
    consumer = AIOKafkaConsumer(
        **client,
        client_id=client_id,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=idle_ms,
        fetch_min_bytes=1,
    )
    await consumer.start()
    reader = Reader("node", consumer, on_record, hot_ms=hot_ms, idle_ms=idle_ms)
    try:
        consumer.assign(list(tps))
        await seek(consumer, tps, positions or {}, new_at_end=True)
        if not positions:
            await replay_recent_control(
                consumer, [tp for tp in tps if tp.topic == control], on_control
            )
    except BaseException:
        await reader.stop(2)
        raise
    return reader


async def replay_recent_control(
    consumer: Any, control: list[TopicPartition], on_control: Callable[[bytes], None]
) -> None:
    """Start the control topic a few heartbeats back, so a new node knows at once which
    adapters are alive instead of answering 503 until their next heartbeat.

    A replayed heartbeat counts as fresh, so an adapter that died just before may be taken
    for alive for up to one TTL more; its requests then end at their deadline (504).
    """
    since = int((time.time() - PRESENCE_REPLAY) * 1000)
    try:
        async with asyncio.timeout(2.0):
            found = await consumer.offsets_for_times({tp: since for tp in control})
    except (TimeoutError, KafkaError) as exc:
        log.info("kafka: control topic not replayed (%r); adapters show up on heartbeat", exc)
        return
    replay = [tp for tp, hit in found.items() if hit is not None and hit.timestamp >= 0]
    for tp in replay:
        consumer.seek(tp, found[tp].offset)
    # Read the replayed part before the node takes calls (bounded), so its first
    # request already knows the adapters.
    try:
        async with asyncio.timeout(2.0):
            ends = await consumer.end_offsets(replay)
            while replay and any([await consumer.position(tp) < ends[tp] for tp in replay]):
                batch = await consumer.getmany(*replay, timeout_ms=100)
                for records in batch.values():
                    for record in records:
                        on_control(record.value)
    except (TimeoutError, KafkaError) as exc:
        log.info("kafka: control replay incomplete (%r); the rest arrives as it comes", exc)


async def follow_partitions(consumer: Any, want: set[TopicPartition]) -> None:
    """Assign partitions of the reply/control topics that appeared since, keeping the
    positions of those already read; the new ones hold only news, so they are read whole."""
    have = set(consumer.assignment())
    if want and not want <= have:
        known = await positions(consumer, have)
        log.info("kafka: reading %d partitions of reply/control topics now", len(want))
        consumer.assign(list(want | have))
        await asyncio.wait_for(seek(consumer, want | have, known, new_at_end=False), 5)
