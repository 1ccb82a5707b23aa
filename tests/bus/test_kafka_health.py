"""The Kafka supervisor's word on the broker (``KafkaBus._check``): an error says "down" at
once, a metadata answer that times out only when it does so twice in a row (once is a busy
broker or host, the likely cause of a moment of 503s in a loaded test run), and an answer
says "up" again. The broker itself stopping and starting: tests/bus/test_reconnect.py."""

from __future__ import annotations

import asyncio

from aiokafka.errors import KafkaConnectionError

from busgate.bus.kafka.transport import SLOW_CHECKS, KafkaBus


class Topics:
    """Answers the supervisor's metadata request as told: hang, fail, or counts."""

    def __init__(self) -> None:
        self.wanted: dict[str, int] = {}
        self.answer: str = "ok"

    async def partition_counts(self, topics: list[str]) -> dict[str, int]:
        if self.answer == "hang":
            await asyncio.sleep(60)
        if self.answer == "fail":
            raise KafkaConnectionError("refused")
        return {}


def bus_with(topics: Topics) -> KafkaBus:
    bus = KafkaBus("127.0.0.1:9", node="n1")
    bus.health_timeout = 0.01  # a hang is cut at once
    bus._topics = topics  # type: ignore[assignment]
    bus._producer = object()  # type: ignore[assignment]  # "connected" asks for one
    bus._healthy = True
    return bus


async def test_one_slow_answer_is_not_an_outage_but_a_run_of_them_is() -> None:
    topics = Topics()
    bus = bus_with(topics)
    topics.answer = "hang"
    for _ in range(SLOW_CHECKS - 1):
        await bus._check()
        assert bus.connected
    await bus._check()
    assert not bus.connected
    topics.answer = "ok"
    await bus._check()
    assert bus.connected


async def test_an_answer_between_slow_ones_starts_the_count_again() -> None:
    topics = Topics()
    bus = bus_with(topics)
    for answer in ["hang", "ok"] * 3:
        topics.answer = answer
        await bus._check()
        assert bus.connected


async def test_an_error_is_an_outage_at_once() -> None:
    topics = Topics()
    bus = bus_with(topics)
    topics.answer = "fail"
    await bus._check()
    assert not bus.connected
