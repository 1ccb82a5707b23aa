"""Every use of an aiokafka internal, in one place.

busgate reaches past aiokafka's public API at these points only; each function says why and
what the public API lacks. ``tests/bus/test_kafka_internals.py`` checks each internal on the
installed aiokafka (it exists, has the shape relied on, and does what is meant) and that the
installed version is in ``TESTED``, the range pinned in ``pyproject.toml``. When an internal
is missing at run time anyway, the function takes a fallback and logs a WARNING, once.

The internals, by object:

* ``AIOKafkaConsumer._fetcher`` and ``Fetcher._fetch_max_wait_ms`` (:func:`set_fetch_wait`);
* ``AIOKafkaConsumer._coordinator`` and ``GroupCoordinator.generation``
  (:func:`group_member`);
* ``AIOKafkaConsumer._client`` and ``AIOKafkaClient.force_metadata_update``
  (:func:`force_metadata_update`);
* ``AIOKafkaProducer.client`` and ``ClusterMetadata.partitions_for_topic``
  (:func:`producer_partitions`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("busgate.bus.kafka")

TESTED = ((0, 13), (0, 15))
"""aiokafka versions (``>=`` first, ``<`` second) on which these internals were checked:
0.13.0 and 0.14.0 pass ``tests/bus/test_kafka_internals.py``. 0.11 and 0.12 have the same
internals, but their Fetcher builds requests through a class chosen at start, which the
test's spy does not see, so they are not claimed."""

_warned: set[str] = set()


def _fallback(internal: str, consequence: str) -> None:
    """Log, once per internal, that it is missing and what busgate does without it."""
    if internal in _warned:
        return
    _warned.add(internal)
    log.warning(
        "kafka: aiokafka internal %s not found (aiokafka outside the tested range?); %s",
        internal,
        consequence,
    )


def set_fetch_wait(consumer: Any, wait_ms: int) -> None:
    """Change how long the broker may hold this consumer's next fetch.

    Why: consumers fetch with a short wait while busy and a long one when idle (see
    ``bus.kafka.transport``). aiokafka's Fetcher reads ``_fetch_max_wait_ms`` for every fetch
    request it builds, but ``fetch_max_wait_ms`` is a constructor argument only: there is no
    public setter. Fallback: the consumer keeps the wait it was created with (the idle one),
    which costs latency on brokers that hold fetches, not correctness.
    """
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is None or not hasattr(fetcher, "_fetch_max_wait_ms"):
        _fallback(
            "AIOKafkaConsumer._fetcher._fetch_max_wait_ms",
            "consumers keep their initial fetch wait (slower replies on some brokers)",
        )
        return
    fetcher._fetch_max_wait_ms = wait_ms


def group_member(consumer: Any) -> bool:
    """Whether a group consumer holds a valid membership (generation) right now.

    Why: after the group forgot the member (its state was lost with a broker restart)
    aiokafka resets the generation to -1 and then commits its *old* positions once more
    before rejoining; Kafka accepts a commit with generation -1 for an empty group, so those
    positions -- beyond the end of the recreated topic -- would become the group's offsets.
    Offsets are therefore committed by busgate, and only while this holds. The public API
    has no notion of membership: ``assignment()`` keeps the old partitions until the
    rejoin. Fallback: taken for a member (offsets are committed as before; without commits
    every restart would replay the replay window).
    """
    coordinator = getattr(consumer, "_coordinator", None)
    generation = getattr(coordinator, "generation", None)
    if not isinstance(generation, int):
        _fallback(
            "AIOKafkaConsumer._coordinator.generation",
            "offsets are committed without checking the group generation",
        )
        return True
    return generation >= 0


def force_metadata_update(consumer: Any) -> None:
    """Have a consumer refresh its cluster metadata now rather than at its next periodic
    refresh (``metadata_max_age_ms``).

    Why: a group rebalances over new partitions only once the consumer's metadata shows
    them; after a broker restart that auto-created a request topic with another partition
    count, waiting for the periodic refresh means one more rebalance much later. aiokafka
    has no public call that refreshes a consumer's metadata. Fallback: the periodic refresh.
    """
    client = getattr(consumer, "_client", None)
    refresh = getattr(client, "force_metadata_update", None)
    if refresh is None:
        _fallback(
            "AIOKafkaConsumer._client.force_metadata_update",
            "partition changes are noticed at the next periodic metadata refresh",
        )
        return
    refresh()  # a future, resolved in the background; nothing waits for it


def producer_partitions(producer: Any, topic: str) -> set[int] | None:
    """The partitions of ``topic`` in the producer's cluster metadata, None if unknown.

    Why: a request is sent to a partition a live adapter holds; that must be a partition the
    producer knows, and it is decided on every send. The public ``partitions_for`` is a
    coroutine that may wait for a metadata fetch; this read never waits. Fallback: None (the
    partitioner picks among all partitions, as when nothing is known).
    """
    client = getattr(producer, "client", None)
    cluster = getattr(client, "cluster", None)
    lookup = getattr(cluster, "partitions_for_topic", None)
    if lookup is None:
        _fallback(
            "AIOKafkaProducer.client.cluster.partitions_for_topic",
            "requests are not steered around departed adapters' partitions",
        )
        return None
    known: set[int] | None = lookup(topic)
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
