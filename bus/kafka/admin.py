"""The topics a node needs: created when missing, grown when short of partitions."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

log = logging.getLogger("busgate.bus.kafka")

_NO_ERROR = 0
_TOPIC_ALREADY_EXISTS = TopicAlreadyExistsError.errno


async def default_replication(admin: Any) -> int:
    """Replication of the topics busgate creates: the number of brokers, at most 3."""
    cluster = await admin.describe_cluster()
    return max(1, min(3, len(cluster.get("brokers", []))))


class Topics:
    """An admin client and the topics this node makes sure exist (``wanted``: topic →
    partitions it should have)."""

    def __init__(
        self, client: Mapping[str, Any], *, client_id: str, replication: int | None
    ) -> None:
        self.client = client
        """The connection arguments (``bus.security.kafka_client``)."""
        self.client_id = client_id
        self.replication = replication
        self.wanted: dict[str, int] = {}
        self._admin: Any = None

    async def start(self) -> None:
        self._admin = AIOKafkaAdminClient(
            **self.client, client_id=self.client_id, request_timeout_ms=10_000
        )
        await self._admin.start()
        if self.replication is None:
            self.replication = await default_replication(self._admin)

    async def close(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            await admin.close()

    async def ensure(self, topics: list[str]) -> dict[str, int]:
        """Create the missing ones of ``topics``, grow request topics that have too few
        partitions; return each topic's partition count."""
        wanted = {t: self.wanted[t] for t in topics}
        response = await self._admin.create_topics(
            [NewTopic(t, n, self.replication or 1) for t, n in wanted.items()]
        )
        for entry in response.topic_errors:
            topic, code = entry[0], entry[1]
            if code == _NO_ERROR:
                log.info("kafka: created topic %s", topic)
            elif code != _TOPIC_ALREADY_EXISTS:
                log.warning("kafka: cannot create topic %s (error %s)", topic, code)
        counts = await self.partition_counts(list(wanted))
        grow = {
            t: NewPartitions(n) for t, n in wanted.items() if n > 1 and 0 < counts.get(t, 0) < n
        }
        if grow:
            try:
                await self._admin.create_partitions(grow)
                log.info("kafka: added partitions to %s", sorted(grow))
                counts = await self.partition_counts(list(wanted))
            except KafkaError as exc:
                log.warning("kafka: cannot add partitions to %s: %r", sorted(grow), exc)
        return counts

    async def partition_counts(self, topics: list[str]) -> dict[str, int]:
        described = await self._admin.describe_topics(topics)
        return {t["topic"]: len(t["partitions"]) for t in described if t["error_code"] == _NO_ERROR}


async def ensure_topic(
    client: Mapping[str, Any], topic: str, partitions: int, configs: dict[str, str]
) -> None:
    """Create ``topic`` (replicated like the bus's own) unless it exists: for the side topics
    a node writes with clients of its own (rate-limit counts, spans)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(**client)
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            new = NewTopic(
                topic,
                num_partitions=partitions,
                replication_factor=await default_replication(admin),
                topic_configs=configs,
            )
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([new])
    finally:
        await admin.close()
