"""Direct producers for ``[services.NAME]``: ad hoc messages to a topic, acknowledged.

Each service gets its own client, because its settings are its own: a Kafka producer built
from the service's ``producer`` table (any aiokafka producer setting passes through;
``acks`` defaults to ``all``), or a NATS connection that publishes to JetStream (waits for
the stream's ack) or core NATS (a flush: the server has it). ``send`` answers where the
message landed. The key and the partition travel as headers on NATS, which has neither.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import fnmatch
import logging
from typing import Any

import nats
from nats.aio.client import Client
from nats.js.api import StorageType, StreamConfig

from busgate.bus import kafka_client_of, nats_tls_of, parse_url
from busgate.contracts.config import Service
from busgate.contracts.errors import BadRequest, BusUnavailable, PayloadTooLarge

log = logging.getLogger("busgate.bus.producers")

KEY = "busgate-key"
PARTITION = "busgate-partition"


class Producer(abc.ABC):
    def __init__(self, service: Service, url: str) -> None:
        self.service = service
        self.url = url

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def send(
        self,
        topic: str,
        key: str,
        partition: int | None,
        data: bytes,
        headers: dict[str, str],
    ) -> dict[str, Any]:
        """Publish and wait for the broker's ack; where it landed. BusUnavailable when the
        broker cannot take it, PayloadTooLarge when it refuses its size."""


class NatsProducer(Producer):
    async def start(self) -> None:
        self.nc = Client()

        async def on_error(exc: Exception) -> None:  # nats-py's default logs a traceback
            log.warning("service %s: nats: %s", self.url, exc or type(exc).__name__)

        try:
            # Bounded: with endless reconnects nats-py also retries a first connect for ever.
            await asyncio.wait_for(
                self.nc.connect(
                    parse_url(self.url)[1],
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.25,  # type: ignore[arg-type]
                    connect_timeout=2,
                    error_cb=on_error,
                    tls=nats_tls_of(self.url),  # None = nats-py default
                ),
                max(self.service.timeout, 2.0),
            )
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            with contextlib.suppress(Exception):
                await self.nc.close()
            raise BusUnavailable(f"cannot connect to {self.url}: {exc!r}") from None
        service = self.service
        if service.stream:
            js = self.nc.jetstream()
            config = StreamConfig(
                name=service.stream,
                subjects=list(service.stream_subjects or service.topics),
                storage=StorageType.FILE,
            )
            try:
                await js.add_stream(config)
            except nats.js.errors.BadRequestError:
                await js.update_stream(config)

    async def close(self) -> None:
        if not self.nc.is_closed:
            await self.nc.close()

    async def send(
        self, topic: str, key: str, partition: int | None, data: bytes, headers: dict[str, str]
    ) -> dict[str, Any]:
        headers = {**headers, KEY: key}
        if partition is not None:
            headers[PARTITION] = str(partition)
        if not self.nc.is_connected:
            raise BusUnavailable("the NATS connection is down; try again shortly")
        if len(data) > self.nc.max_payload:
            raise PayloadTooLarge(f"the broker takes at most {self.nc.max_payload} bytes")
        try:
            if self.service.jetstream:
                ack = await self.nc.jetstream().publish(
                    topic, data, timeout=self.service.timeout, headers=headers
                )
                landed: dict[str, Any] = {"stream": ack.stream, "seq": ack.seq}
                if ack.duplicate:
                    landed["duplicate"] = True
                return landed
            await self.nc.publish(topic, data, headers=headers)
            await self.nc.flush(timeout=int(max(self.service.timeout, 1)))
            return {"subject": topic}
        except nats.errors.MaxPayloadError:
            raise PayloadTooLarge("the broker refused the message as too large") from None
        except nats.js.errors.NoStreamResponseError:
            raise BusUnavailable(f"no JetStream stream takes subject {topic!r}") from None
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusUnavailable(f"NATS did not acknowledge: {type(exc).__name__}") from None


class KafkaProducer(Producer):
    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer
        from aiokafka.errors import KafkaError

        settings: dict[str, Any] = {"acks": "all", **self.service.producer}
        self.producer = AIOKafkaProducer(
            **kafka_client_of(self.url),
            request_timeout_ms=int(self.service.timeout * 1000),
            **settings,
        )
        try:
            await self.producer.start()
        except (KafkaError, OSError) as exc:
            raise BusUnavailable(f"cannot connect to {self.url}: {exc!r}") from None

    async def close(self) -> None:
        await self.producer.stop()

    async def send(
        self, topic: str, key: str, partition: int | None, data: bytes, headers: dict[str, str]
    ) -> dict[str, Any]:
        from aiokafka.errors import KafkaError, MessageSizeTooLargeError

        kafka_headers = [(k, v.encode()) for k, v in headers.items()]
        try:
            async with asyncio.timeout(self.service.timeout):
                if partition is not None:
                    known = await self.producer.partitions_for(topic)
                    if partition not in known:
                        raise BadRequest(f"topic {topic!r} has {len(known)} partition(s)")
                delivery = await self.producer.send(
                    topic, data, key=key.encode(), partition=partition, headers=kafka_headers
                )
                meta = await delivery
        except MessageSizeTooLargeError:
            raise PayloadTooLarge("the broker refused the message as too large") from None
        except TimeoutError:
            raise BusUnavailable("Kafka did not acknowledge in time") from None
        except KafkaError as exc:
            raise BusUnavailable(f"Kafka did not acknowledge: {type(exc).__name__}") from None
        return {"topic": meta.topic, "partition": meta.partition, "offset": meta.offset}


def allows(service: Service, topic: str) -> bool:
    """Whether ``topic`` matches one of the service's glob patterns."""
    return any(fnmatch.fnmatchcase(topic, pattern) for pattern in service.topics)


def producer_for(service: Service, default_url: str) -> Producer:
    url = service.url or default_url
    kind = service.type or ("kafka" if url.lower().startswith("kafka") else "nats")
    if kind == "kafka":
        if service.jetstream:
            raise ValueError("jetstream: the service's broker is Kafka")
        return KafkaProducer(service, url)
    if service.producer:
        raise ValueError("producer: settings pass through to Kafka producers only")
    return NatsProducer(service, url)
