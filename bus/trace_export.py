"""Finished spans on the bus itself, so ``busgate trace`` needs no tracing backend.

Every node batches its finished spans (:class:`BusSpanProcessor`) and publishes them grouped
by call: one :class:`~busgate.bus.spans.SpanBatch` (msgpack, ``bus.spans``) per trace id and
request id. The node that answers a request (adapter, bus-native runner) returns its spans
in the Reply when the edge asks for them, and the edge's batch carries them (``more``): one
message per call rather than one per node (see :class:`BusSpanProcessor`). Not OTLP
protobuf: OpenTelemetry's encoder took 57-80 µs a span here, on the event loop, against
about 1 µs for msgpack; the OTLP export (``bus.otlp``) encodes in a thread, and only when
an endpoint is configured.

- NATS: subject ``PREFIX.trace.TRACE_ID.REQUEST_ID``, captured by a JetStream stream over
  ``PREFIX.trace.>`` that keeps ``bus_max_age`` seconds (at most :data:`MAX_BYTES`, oldest
  dropped first). A call is read back by filtering on either token.
- Kafka: topic ``PREFIX.trace`` keyed by trace id (``retention.ms`` = ``bus_max_age``), the
  request id in a header. Its own producer, lingering :data:`KAFKA_LINGER_MS`, so span batches
  never delay the request path's sends.

The processor runs on the event loop (no exporter thread): spans end on the loop, a timer
flushes every :data:`FLUSH_DELAY` seconds, and publishing is what the bus does anyway.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from busgate.bus import kafka_client_of, parse_url
from busgate.bus.base import Bus
from busgate.bus.headers import REQUEST_ID as REQUEST_ID_HEADER
from busgate.bus.naming import Names
from busgate.bus.spans import ATTRIBUTES, TRACE_ID, Row, encode_batch
from busgate.bus.tracing import REQUEST_ID

log = logging.getLogger("busgate.tracing")

FLUSH_DELAY = 0.2
"""Seconds a finished span may wait before its batch goes out."""
MAX_BATCH = 2048
MAX_BYTES = 512 * 1024 * 1024
"""Size limit of the NATS trace stream: a fully sampled busy gateway fills 1 h quickly."""
KAFKA_LINGER_MS = 50
_SUBJECT_UNSAFE = re.compile(r"[^A-Za-z0-9_:\-]")


def stream_name(prefix: str) -> str:
    return f"{prefix}_trace".replace(".", "_").upper()


def token(request_id: str) -> str:
    """A request id as one subject token (edge ids already are; others are made so)."""
    return _SUBJECT_UNSAFE.sub("_", request_id)[:128] or "-"


class TraceSink(abc.ABC):
    """Where a node publishes its span batches."""

    async def start(self) -> None:  # noqa: B027 - optional
        """Create what the bus needs (stream, topic)."""

    @abc.abstractmethod
    async def publish(self, trace_id: str, request_id: str, data: bytes) -> None: ...

    async def publish_many(self, batches: list[tuple[str, str, bytes]]) -> int:
        """Each (trace id, request id, batch) as :meth:`publish` sends it; returns how many
        were lost (logged once by the caller)."""
        lost = 0
        for trace_id, request_id, data in batches:
            try:
                await self.publish(trace_id, request_id, data)
            except Exception as exc:
                if not lost:
                    log.warning("spans not exported to the bus: %r", exc)
                lost += 1
        return lost

    async def close(self) -> None:  # noqa: B027 - optional
        pass


class NatsTraceSink(TraceSink):
    def __init__(self, nc: Any, names: Names, *, max_age: float) -> None:
        self.nc = nc
        self.names = names
        self.max_age = max_age

    async def start(self) -> None:
        import nats.js.errors
        from nats.js.api import StreamConfig

        config = StreamConfig(
            name=stream_name(self.names.prefix),
            subjects=[self.names.trace() + ".>"],
            max_age=self.max_age,
            max_bytes=MAX_BYTES,
        )
        js = self.nc.jetstream()
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            await js.update_stream(config)

    async def publish(self, trace_id: str, request_id: str, data: bytes) -> None:
        # A core publish: the stream captures it, and no acknowledgement is awaited.
        await self.nc.publish(self.names.trace(trace_id, token(request_id)), data)

    async def publish_many(self, batches: list[tuple[str, str, bytes]]) -> int:
        """All of a flush's messages in one write to the connection's buffer (``wire``):
        ``nc.publish`` per call's batch was most of what the export cost the edge's loop."""
        from busgate.bus.nats import wire

        trace = self.names.trace()
        return await wire.publish_many(
            self.nc,
            [
                (f"{trace}.{trace_id}.{token(request_id)}", data)
                for trace_id, request_id, data in batches
            ],
        )


class KafkaTraceSink(TraceSink):
    def __init__(self, client: dict[str, Any], names: Names, *, max_age: float) -> None:
        self.client = client
        """The aiokafka connection arguments (``bus.kafka_client_of``)."""
        self.topic = names.trace()
        self.max_age = max_age
        self._producer: Any = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer
        from aiokafka.partitioner import DefaultPartitioner

        from busgate.bus.kafka.admin import ensure_topic

        await ensure_topic(
            self.client, self.topic, 3, {"retention.ms": str(int(self.max_age * 1000))}
        )
        self._producer = AIOKafkaProducer(
            **self.client,
            acks=1,
            linger_ms=KAFKA_LINGER_MS,
            partitioner=DefaultPartitioner(),  # the reader picks a trace id's partition with it
        )
        await self._producer.start()

    async def publish(self, trace_id: str, request_id: str, data: bytes) -> None:
        await self._producer.send(
            self.topic,
            data,
            key=trace_id.encode(),
            headers=[(REQUEST_ID_HEADER, request_id.encode())],
        )

    async def close(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._producer.stop(), 5)
            self._producer = None


def open_sink(bus: Bus, url: str, *, max_age: float) -> TraceSink:
    """The sink for ``bus`` (NATS: its connection; Kafka: a producer of its own)."""
    scheme, _, _ = parse_url(url)
    if scheme == "nats":
        return NatsTraceSink(bus.nc, bus.names, max_age=max_age)  # type: ignore[attr-defined]
    return KafkaTraceSink(kafka_client_of(url), bus.names, max_age=max_age)


class BusSpanProcessor:
    """Batches finished spans on the event loop and publishes them grouped by call.

    One message per call, not one per node: a node answering a Request that asks for it
    (``spans_in_reply``, set by an edge that exports to the bus) holds the call's spans
    (:meth:`hold`) and returns them in its Reply (:meth:`take`); the edge hands them back
    here (:meth:`carry`) and they go out inside its own batch of the call. JetStream storing
    one message per node and call was about a third of what tracing cost (nats-server's CPU
    per traced call: +48 µs over an untraced one, two messages). A reply that will come too
    late for its edge (the deadline is near) does not carry them: its node publishes them
    itself (:meth:`release`), so ``busgate trace`` still shows where the time went.
    """

    def __init__(
        self, sink: TraceSink, *, service: str, node: str, delay: float = FLUSH_DELAY
    ) -> None:
        self.sink = sink
        self.service = service
        self.node = node
        self.delay = delay
        self._loop = asyncio.get_running_loop()
        self._spans: list[Row] = []
        self._carried: list[tuple[str, str, bytes]] = []
        self._held: dict[str, list[Row]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self.dropped = 0
        """Span batches (one per call) lost because the bus refused them."""

    def on_end(self, span: Row) -> None:
        """Spans end on the event loop (busgate ends none elsewhere)."""
        if self._held:
            held = self._held.get(span[ATTRIBUTES].get(REQUEST_ID))
            if held is not None:
                held.append(span)
                return
        spans = self._spans
        spans.append(span)
        if self._timer is None:
            self._timer = self._loop.call_later(self.delay, self._flush)
        elif len(spans) >= MAX_BATCH:
            self._flush()

    def hold(self, request_id: str) -> None:
        """Keep the spans of this call that end from now on, for its Reply."""
        self._held[request_id] = []

    def take(self, request_id: str) -> bytes:
        """The held spans of a call as one encoded batch (b"": none), no longer held."""
        rows = self._held.pop(request_id, None)
        return encode_batch(self.service, self.node, rows) if rows else b""

    def release(self, request_id: str) -> None:
        """Stop holding a call's spans; those held are published as any others."""
        for span in self._held.pop(request_id, None) or ():
            self.on_end(span)

    def carry(self, trace_id: str, request_id: str, data: bytes) -> None:
        """Another node's encoded batch of a call (from its Reply): it goes out with this
        node's spans of the call, in one message."""
        self._carried.append((trace_id, request_id, data))
        if self._timer is None:
            self._timer = self._loop.call_later(self.delay, self._flush)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        spans, self._spans = self._spans, []
        carried, self._carried = self._carried, []
        if spans or carried:
            task = self._loop.create_task(self._send(spans, carried))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, spans: Sequence[Row], carried: Sequence[tuple[str, str, bytes]]) -> None:
        # One pass each: a flush holds hundreds of calls (two spans and a carried batch
        # each at an edge), and this runs on the event loop.
        calls: dict[tuple[str, str], tuple[list[Row], list[bytes]]] = {}
        for span in spans:
            key = (span[TRACE_ID], str(span[ATTRIBUTES].get(REQUEST_ID, "-")))
            found = calls.get(key)
            if found is None:
                calls[key] = ([span], [])
            else:
                found[0].append(span)
        for trace_id, request_id, data in carried:
            key = (trace_id, request_id)
            found = calls.get(key)
            if found is None:
                calls[key] = ([], [data])
            else:
                found[1].append(data)
        service, node = self.service, self.node
        batches = [
            (trace_id, request_id, encode_batch(service, node, rows, other))
            for (trace_id, request_id), (rows, other) in calls.items()
        ]
        try:
            lost = await self.sink.publish_many(batches)
        except Exception as exc:
            if not self.dropped:
                log.warning("spans not exported to the bus: %r", exc)
            lost = len(batches)
        self.dropped += lost

    async def aclose(self) -> None:
        """Publish what is buffered, then close the sink."""
        for request_id in list(self._held):
            self.release(request_id)
        self._flush()
        if self._sending:
            await asyncio.wait(self._sending, timeout=5)
        await self.sink.close()


# -- reading back (``busgate trace``) ---------------------------------------------------


async def read_call(
    url: str, prefix: str, *, trace_id: str = "", request_id: str = ""
) -> list[bytes]:
    """Every span batch published for a trace id or a request id, oldest first."""
    scheme, _, _ = parse_url(url)
    names = Names(prefix)
    if scheme == "nats":
        return await _nats_read(url, names, trace_id, request_id)
    return await _kafka_read(url, names, trace_id, request_id)


async def follow(
    url: str, prefix: str, ready: Callable[[], None] = lambda: None
) -> AsyncIterator[bytes]:
    """Span batches as they are published, from now on; ``ready()`` once listening."""
    scheme, _, _ = parse_url(url)
    names = Names(prefix)
    if scheme == "nats":
        async for data in _nats_follow(url, names, ready):
            yield data
    else:
        async for data in _kafka_follow(url, names, ready):
            yield data


async def _nats_read(url: str, names: Names, trace_id: str, request_id: str) -> list[bytes]:
    import nats.errors
    import nats.js.errors
    from nats.js.api import DeliverPolicy

    from busgate.bus.nats.transport import connect

    subject = (
        f"{names.trace()}.{trace_id}.>" if trace_id else f"{names.trace()}.*.{token(request_id)}"
    )
    nc = await connect(url, connect_timeout=5, max_reconnect_attempts=0)
    found: list[bytes] = []
    try:
        js = nc.jetstream()
        try:
            sub = await js.subscribe(
                subject,
                stream=stream_name(names.prefix),
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.ALL,
            )
        except nats.js.errors.NotFoundError:
            return []  # no stream yet: nothing was ever exported
        info = await sub.consumer_info()
        # A push consumer may have delivered everything already (num_pending 0 then).
        if info.num_pending or (info.delivered is not None and info.delivered.consumer_seq):
            while True:
                msg = await sub.next_msg(timeout=5)
                found.append(msg.data)
                if msg.metadata.num_pending == 0:
                    break
        await sub.unsubscribe()
    finally:
        await nc.close()
    return found


async def _nats_follow(url: str, names: Names, ready: Callable[[], None]) -> AsyncIterator[bytes]:
    """A core subscription, not a JetStream consumer: live output needs no durable state on
    the server, and what it misses during a reconnect stays in the stream for ``trace ID``
    (said in ``busgate trace --help``)."""
    from busgate.bus.nats.transport import connect

    nc = await connect(url, connect_timeout=5)
    try:
        sub = await nc.subscribe(names.trace() + ".>")
        await nc.flush()  # the server knows the subscription now
        ready()
        async for msg in sub.messages:
            yield msg.data
    finally:
        await nc.close()


async def _kafka_consumer(url: str, topic: str, *, end: bool, key: bytes = b"") -> Any:
    """A consumer without a group, assigned every partition of ``topic`` (None: no topic),
    or only the one the producers' partitioner puts ``key`` in."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.partitioner import DefaultPartitioner

    consumer = AIOKafkaConsumer(**kafka_client_of(url), enable_auto_commit=False)
    await consumer.start()
    if topic not in await consumer.topics():
        await consumer.stop()
        return None
    partitions = sorted(consumer.partitions_for_topic(topic) or ())
    if key and partitions:  # the sinks' producers partition by key with this partitioner
        partitions = [DefaultPartitioner()(key, partitions, partitions)]
    tps = [TopicPartition(topic, p) for p in partitions]
    consumer.assign(tps)
    if end:
        await consumer.seek_to_end(*tps)
    else:
        await consumer.seek_to_beginning(*tps)
    return consumer


async def _kafka_read(url: str, names: Names, trace_id: str, request_id: str) -> list[bytes]:
    consumer = await _kafka_consumer(url, names.trace(), end=False, key=trace_id.encode())
    if consumer is None:
        return []
    found: list[bytes] = []
    want_key = trace_id.encode()
    want_id = request_id.encode()
    try:
        tps = list(consumer.assignment())
        ends = await consumer.end_offsets(tps)
        while True:
            positions = [await consumer.position(tp) for tp in tps]
            if all(at >= ends[tp] for at, tp in zip(positions, tps, strict=True)):
                break
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    if trace_id and record.key != want_key:
                        continue
                    if request_id and (REQUEST_ID_HEADER, want_id) not in record.headers:
                        continue
                    found.append(record.value)
    finally:
        await consumer.stop()
    return found


async def _kafka_follow(url: str, names: Names, ready: Callable[[], None]) -> AsyncIterator[bytes]:
    consumer = None
    while consumer is None:  # the topic appears with the first node that exports
        consumer = await _kafka_consumer(url, names.trace(), end=True)
        if consumer is None:
            await asyncio.sleep(1)
    try:
        for tp in consumer.assignment():
            await consumer.position(tp)  # resolves the end offsets: nothing older comes
        ready()
        while True:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    yield record.value
    finally:
        await consumer.stop()
