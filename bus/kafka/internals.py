"""Every use of an aiokafka internal, in one place.

aiokafka has no public way to do these; each function says why busgate needs it.
"""

from __future__ import annotations

import asyncio
from typing import Any


def set_fetch_wait(consumer: Any, wait_ms: int) -> None:
    """Change how long the broker may hold this consumer's next fetch.

    aiokafka reads the value for every fetch it builds but has no public setter; without the
    attribute (another aiokafka version) the consumer keeps the wait it was created with.
    """
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is not None and hasattr(fetcher, "_fetch_max_wait_ms"):
        fetcher._fetch_max_wait_ms = wait_ms


def group_member(consumer: Any) -> bool:
    """Whether a group consumer holds a valid membership (generation) right now.

    After the group forgot the member (its state was lost with a broker restart) aiokafka
    resets the generation to -1 and then commits its *old* positions once more before
    rejoining; Kafka accepts a commit with generation -1 for an empty group, so those
    positions -- beyond the end of the recreated topic -- would become the group's offsets.
    Offsets are therefore committed by busgate, and only while this holds.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    generation = getattr(coordinator, "generation", -1)
    return isinstance(generation, int) and generation >= 0


def force_metadata_update(consumer: Any) -> None:
    """Have a consumer refresh its cluster metadata now rather than at its next periodic
    refresh (see ``KafkaBus._refresh_if_stale``)."""
    client = getattr(consumer, "_client", None)
    if client is not None:
        client.force_metadata_update()


def producer_partitions(producer: Any, topic: str) -> set[int] | None:
    """The partitions of ``topic`` in the producer's cluster metadata, None if unknown."""
    known: set[int] | None = producer.client.cluster.partitions_for_topic(topic)
    return known


async def stop_consumer(consumer: Any, grace: float) -> None:
    """Stop an aiokafka consumer for good; raise no CancelledError but one aimed at us.

    aiokafka's ``stop()`` cancels its background tasks and then awaits them; a task that was
    cancelled before it first ran (the group-less coordinator's task of a consumer started
    and stopped at once: aio-libs/aiokafka#647) or while it slept in a fetch's retry backoff
    (the broker was away a moment ago) hands that CancelledError on out of ``stop()``, which
    then returns without stopping the fetcher's tasks or closing the connections. So an edge
    closed right after a broker restart failed its cleanup with CancelledErrors. Here the
    stray CancelledError is told from a cancellation of the caller (``Task.cancelling``),
    and what ``stop()`` left is finished: the fetcher's tasks and the client.
    """
    me = asyncio.current_task()
    before = me.cancelling() if me is not None else 0
    try:
        await asyncio.wait_for(consumer.stop(), grace)
        return
    except asyncio.CancelledError:
        if me is None or me.cancelling() > before:
            raise
    fetcher = getattr(consumer, "_fetcher", None)
    pending = getattr(fetcher, "_pending_tasks", ())
    tasks = [
        task
        for task in (getattr(fetcher, "_fetch_task", None), *pending)
        if task is not None and not task.done()
    ]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=grace)
    client = getattr(consumer, "_client", None)
    if client is not None:
        await asyncio.wait_for(client.close(), grace)
