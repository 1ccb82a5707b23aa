"""The aiokafka internals busgate relies on (``bus.kafka.internals``), checked on the
installed aiokafka against a real broker: each exists, has the shape relied on and does
what busgate uses it for. A newer aiokafka that changes one fails here, loudly, rather than
degrading a deployment quietly.
"""

from __future__ import annotations

import inspect
import logging
import re
import tomllib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiokafka
import aiokafka.consumer.fetcher as fetcher_module
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from busgate.brokers import TansuBroker
from busgate.bus.kafka import internals
from busgate.bus.kafka.transport import KafkaBus

from .conftest import SYSTEM, World, eventually

ROOT = Path(__file__).resolve().parents[2]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def test_installed_aiokafka_is_in_the_tested_range_and_pyproject_pins_it() -> None:
    low, high = internals.TESTED
    assert low <= _version(aiokafka.__version__) < high, (
        f"aiokafka {aiokafka.__version__} is outside the range whose internals were checked "
        f"({low} to {high}); check bus/kafka/internals.py against it and move the range"
    )
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = [
        dep
        for deps in project["optional-dependencies"].values()
        for dep in deps
        if dep.startswith("aiokafka")
    ]
    want = f"aiokafka>={'.'.join(map(str, low))},<{'.'.join(map(str, high))}"
    assert pinned and set(pinned) == {want}


@pytest.fixture
def warned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees the fallbacks' warn-once memory empty."""
    monkeypatch.setattr(internals, "_warned", set())


def test_each_fallback_is_taken_with_one_warning(
    warned: None, caplog: pytest.LogCaptureFixture
) -> None:
    class Bare:
        """A consumer/producer of an aiokafka whose internals moved."""

    caplog.set_level(logging.WARNING, logger="busgate.bus.kafka")
    for _ in range(2):
        internals.set_fetch_wait(Bare(), 5)
        assert internals.group_member(Bare()) is True
        internals.force_metadata_update(Bare())
        assert internals.producer_partitions(Bare(), "t") is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4, warnings
    for internal in (
        "_fetcher._fetch_max_wait_ms",
        "_coordinator.generation",
        "_client.force_metadata_update",
        "client.cluster.partitions_for_topic",
    ):
        assert sum(internal in w for w in warnings) == 1, (internal, warnings)


# -- on the installed aiokafka, against a real broker ----------------------------------------


def _servers(broker: TansuBroker) -> str:
    return f"{broker.host}:{broker.port}"


@pytest_asyncio.fixture
async def topic(tansu_broker: TansuBroker) -> AsyncIterator[str]:
    name = f"internals-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=_servers(tansu_broker))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 2, 1)])
    finally:
        await admin.close()
    yield name


@pytest_asyncio.fixture
async def consumer(tansu_broker: TansuBroker) -> AsyncIterator[AIOKafkaConsumer]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=_servers(tansu_broker), enable_auto_commit=False, fetch_max_wait_ms=123
    )
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


@pytest.mark.kafka
async def test_the_fetch_wait_set_is_the_one_the_next_fetch_request_carries(
    consumer: AIOKafkaConsumer, topic: str, warned: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[int] = []
    real = fetcher_module.FetchRequest

    def spy(max_wait_ms: int, *args: Any, **kwargs: Any) -> Any:
        built.append(max_wait_ms)
        return real(max_wait_ms, *args, **kwargs)

    # raising=True (the default): a Fetcher that no longer builds FetchRequest fails here.
    # Other consumers of the session fetch too: this one's waits (123, 37) are unlike theirs.
    monkeypatch.setattr(fetcher_module, "FetchRequest", spy)
    internals.set_fetch_wait(consumer, 37)
    assert internals._warned == set()
    consumer.assign([TopicPartition(topic, 0)])
    await consumer.getmany(timeout_ms=300)
    await eventually(lambda: 37 in built, within=5)
    assert 123 not in built


@pytest.mark.kafka
@pytest.mark.parametrize("world", ["kafka"], indirect=True)
async def test_a_joined_group_consumer_is_a_member_and_a_reset_one_is_not(
    world: World, tansu_broker: TansuBroker, topic: str, warned: None
) -> None:
    adapter = world.adapters[0]
    assert isinstance(adapter, KafkaBus)
    joined = adapter._request_readers[SYSTEM].consumer
    assert joined._coordinator.generation >= 0
    assert internals.group_member(joined) is True

    # A consumer the group forgot: aiokafka resets its generation this way.
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=_servers(tansu_broker), group_id=f"g-{topic}"
    )
    await consumer.start()
    try:
        consumer._coordinator.reset_generation()
        assert internals.group_member(consumer) is False
    finally:
        await consumer.stop()
    assert internals._warned == set()


@pytest.mark.kafka
async def test_a_forced_metadata_update_shows_a_new_topic_to_the_consumer(
    consumer: AIOKafkaConsumer, tansu_broker: TansuBroker, warned: None
) -> None:
    assert inspect.signature(consumer._client.force_metadata_update).parameters == {}
    name = f"internals-new-{uuid.uuid4().hex[:8]}"
    await consumer._client.force_metadata_update()  # settle what it knows now
    assert consumer.partitions_for_topic(name) is None
    admin = AIOKafkaAdminClient(bootstrap_servers=_servers(tansu_broker))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 3, 1)])
    finally:
        await admin.close()
    internals.force_metadata_update(consumer)
    # The default metadata_max_age_ms is 5 minutes: only the forced update shows it now.
    await eventually(lambda: consumer.partitions_for_topic(name) == {0, 1, 2}, within=5)
    assert internals._warned == set()


@pytest.mark.kafka
async def test_producer_partitions_read_what_the_public_wait_returns(
    tansu_broker: TansuBroker, topic: str, warned: None
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=_servers(tansu_broker))
    await producer.start()
    try:
        public = await producer.partitions_for(topic)
        assert public == {0, 1}
        assert internals.producer_partitions(producer, topic) == public
    finally:
        await producer.stop()
    assert internals._warned == set()
