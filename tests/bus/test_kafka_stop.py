"""Closing Kafka clients is clean whatever the broker just did.

aiokafka's ``consumer.stop()`` hands on CancelledErrors of its own tasks (a consumer started
and stopped at once; a fetch sleeping in its retry backoff because the broker was away) and
then leaves its connections open; ``internals.stop_consumer`` finishes the job. Seen as an
edge whose cleanup failed with three CancelledErrors right after a Tansu restart.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from busgate.brokers import TansuBroker
from busgate.bus import from_url
from busgate.bus.kafka.internals import stop_consumer
from busgate.bus.store.kafka import KafkaStore

pytestmark = pytest.mark.kafka


@pytest.fixture
def broker() -> Iterator[TansuBroker]:
    """Its own broker: the tests stop it."""
    with TansuBroker() as own:
        yield own


def servers(broker: TansuBroker) -> str:
    return f"{broker.host}:{broker.port}"


def aiokafka_tasks() -> list[asyncio.Task[object]]:
    """Tasks a consumer left running (its fetcher, metadata sync, connection readers)."""
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done() and "aiokafka" in repr(task.get_coro())
    ]


class FetchFailed(logging.Handler):
    """Sets ``seen`` when aiokafka logs a failed fetch: the fetch task now sleeps in its
    retry backoff, the moment ``stop()`` used to hand on a CancelledError from."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Failed fetch messages"):
            self.seen.set()


@pytest.fixture
def fetch_failed() -> Iterator[FetchFailed]:
    handler = FetchFailed()
    logger = logging.getLogger("aiokafka.consumer.fetcher")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


async def test_a_consumer_started_and_stopped_at_once_stops_cleanly(tansu_broker):
    for _ in range(3):
        consumer = AIOKafkaConsumer(bootstrap_servers=servers(tansu_broker))
        await consumer.start()
        await stop_consumer(consumer, 5)  # aiokafka's stop() raised CancelledError here
    assert aiokafka_tasks() == []


async def test_a_consumer_in_its_fetch_retry_stops_cleanly(broker, fetch_failed):
    topic = f"t{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=servers(broker))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=servers(broker), retry_backoff_ms=30_000)
    await consumer.start()
    consumer.assign([TopicPartition(topic, 0)])
    await consumer.getmany(timeout_ms=200)
    broker.stop()
    async with asyncio.timeout(20):
        await fetch_failed.seen.wait()
    async with asyncio.timeout(10):  # the retry sleeps 30 s: not waited for
        await stop_consumer(consumer, 5)
    assert aiokafka_tasks() == []


async def test_store_and_bus_close_cleanly_with_the_broker_just_gone(broker, fetch_failed):
    """What an edge closes: its stores and its bus (node reader, producers, admin)."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    bus = from_url(broker.url, node=f"edge-{prefix}", prefix=prefix)
    await bus.connect()
    store = KafkaStore(servers(broker), "things", bytes, prefix=prefix)
    await store.start()
    broker.stop()
    async with asyncio.timeout(20):
        await fetch_failed.seen.wait()
    async with asyncio.timeout(30):
        await store.close()
        await bus.close()
    assert aiokafka_tasks() == []
