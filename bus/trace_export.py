"""Finished spans on the bus itself, so ``busgate trace`` needs no tracing backend.

Every node batches its finished spans (:class:`BusSpanProcessor`) and publishes them a few
messages per flush: the calls of a flush are sorted into :data:`BUCKETS` x :data:`BUCKETS`
buckets by their trace id and request id (:func:`bucket`), and each bucket's spans go out as
one :class:`~busgate.bus.spans.SpanBatch` (msgpack, ``bus.spans``), the batches other nodes
returned in their Replies inside it (``more``). One message per call was what the export
cost most: nats-server storing it, and the edge building and writing it (bench, December
2026: traced calls at 0.76-0.80x of untraced ones with a message per call). Not OTLP
protobuf: OpenTelemetry's encoder took 57-80 µs a span here, on the event loop, against
about 1 µs for msgpack; the OTLP export (``bus.otlp``) encodes in a thread, and only when an
endpoint is configured.

- NATS: subject ``PREFIX.trace.T.R`` (T: the trace id's bucket, R: the request id's),
  captured by a JetStream stream over ``PREFIX.trace.>`` that keeps ``bus_max_age`` seconds
  (at most ``bus_max_bytes``, :data:`MAX_BYTES` by default, oldest dropped first). A call is
  read back by filtering on its trace id's bucket (``PREFIX.trace.T.*``) or its request id's
  (``PREFIX.trace.*.R``): an eighth of the stream, whose messages are searched for the id
  before they are decoded.
- Kafka: topic ``PREFIX.trace`` keyed by the trace id's bucket (``retention.ms`` =
  ``bus_max_age``, ``retention.bytes`` its partitions' share of ``bus_max_bytes``), so a trace
  is read from one partition. Its own producer, lingering
  :data:`KAFKA_LINGER_MS`, so span batches never delay the request path's sends.

The processor runs on the event loop (no exporter thread): spans end on the loop, a timer
flushes every :data:`FLUSH_DELAY` seconds, and publishing is what the bus does anyway.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from busgate.bus import kafka_client_of, parse_url
from busgate.bus.base import Bus, Responder
from busgate.bus.naming import Names
from busgate.bus.spans import (
    ATTRIBUTES,
    TRACE_ID,
    Handling,
    Row,
    Serving,
    Span,
    batch_head,
    encode_batch,
    encode_span,
    join_batch,
)
from busgate.bus.tracing import REPLY_MARGIN, REQUEST_ID
from busgate.contracts.config import Telemetry

log = logging.getLogger("busgate.tracing")

FLUSH_DELAY = 0.2
"""Seconds a finished span may wait before its batch goes out."""
MAX_BATCH = 2048
MAX_BYTES = 512 * 1024 * 1024
"""Size limit of the trace stream or topic unless ``bus_max_bytes`` says otherwise."""
PARTITIONS = 3
"""Of the Kafka trace topic."""
MAX_MESSAGE = 256 * 1024
"""Bytes of one span message at most (less when the bus carries less): a bucket's spans
beyond it are split over several messages."""
KAFKA_LINGER_MS = 50
BUCKETS = 8
"""Buckets per id: a flush makes at most ``BUCKETS ** 2`` messages, and a read searches
``1 / BUCKETS`` of what is kept."""
_TRACE_BUCKET = {c: int(c, 16) % BUCKETS for c in "0123456789abcdef"}
_KEYS = [[f"{t}.{r}" for r in range(BUCKETS)] for t in range(BUCKETS)]
"""Every bucket's name, made once: ``_KEYS[trace bucket][request bucket]``."""
_Pending = tuple[list[bytes], list[bytes], list[bytes]]
"""A bucket's encoded spans, the carried batches of other nodes and the calls' records
(``SpanBatch.calls``), awaiting the flush."""


def stream_name(prefix: str) -> str:
    return f"{prefix}_trace".replace(".", "_").upper()


def trace_bucket(trace_id: str) -> str:
    """From the trace id's last hex digit (W3C: its random part is on the right)."""
    return str(_TRACE_BUCKET.get(trace_id[-1:], 0))


def request_bucket(request_id: str) -> str:
    return str(_request_index(request_id))


def _request_index(request_id: str) -> int:
    """From the request id's last character, as every node computes it (``hash()`` of a str
    differs between processes): an edge's ids end in a counter, so its calls spread over the
    buckets (8 and 9 land with 0 and 1). A character rather than a crc32 of the id: this runs
    for every span that ends."""
    return ord(request_id[-1]) % BUCKETS if request_id else 0


def bucket(trace_id: str, request_id: str) -> str:
    """Where a call's spans go: ``T.R``, the two-token tail of its NATS subject."""
    # _request_index written out: this runs for every span that ends
    return _KEYS[_TRACE_BUCKET.get(trace_id[-1:], 0)][
        ord(request_id[-1]) % BUCKETS if request_id else 0
    ]


class TraceSink(abc.ABC):
    """Where a node publishes its span batches, each to a :func:`bucket`."""

    max_message: int = MAX_MESSAGE
    """The largest span message this sink sends."""

    async def start(self) -> None:  # noqa: B027 - optional
        """Create what the bus needs (stream, topic)."""

    @abc.abstractmethod
    async def publish(self, bucket: str, data: bytes) -> None: ...

    async def publish_many(self, batches: list[tuple[str, bytes]]) -> int:
        """Each (bucket, batch) as :meth:`publish` sends it; returns how many were lost
        (logged once by the caller)."""
        lost = 0
        for key, data in batches:
            try:
                await self.publish(key, data)
            except Exception as exc:
                if not lost:
                    log.warning("spans not exported to the bus: %r", exc)
                lost += 1
        return lost

    async def close(self) -> None:  # noqa: B027 - optional
        pass


class NatsTraceSink(TraceSink):
    """``storage``: where the stream keeps span messages: ``memory`` by default, since
    storing them on disk was most of what exporting cost nats-server (bench: its CPU per
    traced call +13 µs over an untraced one with file storage, +6 in memory); a stream that
    exists already keeps the storage it has (JetStream cannot change it), and a server
    without the memory for it gets a file stream."""

    def __init__(
        self,
        nc: Any,
        names: Names,
        *,
        max_age: float,
        max_bytes: int = MAX_BYTES,
        storage: str = "memory",
    ) -> None:
        self.nc = nc
        self.names = names
        self.max_age = max_age
        self.max_bytes = max_bytes
        self.storage = storage
        self.max_message = min(MAX_MESSAGE, max(nc.max_payload - 1024, 1024))

    async def start(self) -> None:
        import nats.js.errors
        from nats.js.api import StorageType, StreamConfig

        js = self.nc.jetstream()
        name = stream_name(self.names.prefix)
        storage = StorageType.MEMORY if self.storage == "memory" else StorageType.FILE
        config = StreamConfig(
            name=name,
            subjects=[self.names.trace() + ".>"],
            max_age=self.max_age,
            max_bytes=self.max_bytes,
            storage=storage,
        )
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            # Another node made it: keep its storage (JetStream refuses to change it).
            config.storage = (await js.stream_info(name)).config.storage
            await js.update_stream(config)
        except nats.js.errors.APIError as exc:
            if storage != StorageType.MEMORY:
                raise
            log.warning("trace stream not kept in memory (%s): on disk instead", exc.description)
            config.storage = StorageType.FILE
            await js.add_stream(config)

    async def publish(self, bucket: str, data: bytes) -> None:
        # A core publish: the stream captures it, and no acknowledgement is awaited.
        await self.nc.publish(f"{self.names.trace()}.{bucket}", data)

    async def publish_many(self, batches: list[tuple[str, bytes]]) -> int:
        """All of a flush's messages in one write to the connection's buffer (``wire``)."""
        from busgate.bus.nats import wire

        trace = self.names.trace()
        return await wire.publish_many(self.nc, [(f"{trace}.{key}", data) for key, data in batches])


class KafkaTraceSink(TraceSink):
    def __init__(
        self, client: dict[str, Any], names: Names, *, max_age: float, max_bytes: int = MAX_BYTES
    ) -> None:
        self.client = client
        """The aiokafka connection arguments (``KafkaBus.client``, ``bus.kafka_client_of``)."""
        self.topic = names.trace()
        self.max_age = max_age
        self.max_bytes = max_bytes
        self._producer: Any = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer
        from aiokafka.partitioner import DefaultPartitioner

        from busgate.bus.kafka.admin import ensure_topic

        retention = {
            "retention.ms": str(int(self.max_age * 1000)),
            "retention.bytes": str(max(self.max_bytes // PARTITIONS, 1)),  # per partition
        }
        await ensure_topic(self.client, self.topic, PARTITIONS, retention)
        self._producer = AIOKafkaProducer(
            **self.client,
            acks=1,
            linger_ms=KAFKA_LINGER_MS,
            partitioner=DefaultPartitioner(),  # the reader picks a trace id's partition with it
        )
        await self._producer.start()

    async def publish(self, bucket: str, data: bytes) -> None:
        # Keyed by the trace id's bucket: a trace's spans are in one partition.
        await self._producer.send(self.topic, data, key=bucket.partition(".")[0].encode())

    async def close(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._producer.stop(), 5)
            self._producer = None


def open_sink(bus: Bus, url: str, telemetry: Telemetry) -> TraceSink:
    """The sink for ``bus`` (NATS: its connection; Kafka: a producer of its own, connected
    as the bus's clients are), keeping what ``telemetry``'s ``bus_*`` settings say."""
    scheme, _, _ = parse_url(url)
    age, size = telemetry.bus_max_age, telemetry.bus_max_bytes
    if scheme == "nats":
        nc = bus.nc  # type: ignore[attr-defined]
        return NatsTraceSink(
            nc, bus.names, max_age=age, max_bytes=size, storage=telemetry.bus_storage
        )
    client = bus.client  # type: ignore[attr-defined]
    return KafkaTraceSink(client, bus.names, max_age=age, max_bytes=size)


class BusSpanProcessor:
    """Encodes each span as it ends into its bucket's pending message, and publishes the
    pending messages every :data:`FLUSH_DELAY` seconds.

    Encoded at once rather than kept as objects until the flush: a flush holds hundreds of
    calls, and their spans' tuples and dicts, alive for 0.2 s, were what the garbage collector
    and the caches of a busy node carried; bytes are a tenth of that and a flush only joins
    them.

    Not a message per node: a node answering a Request that asks for it
    (``spans_in_reply``, set by an edge that exports to the bus) holds the call's spans
    (:meth:`hold`) and returns them in its Reply: an adapter its CONSUMER span as a
    ``Served`` record (:meth:`reply_spans`), which the edge writes into its PRODUCER span,
    a bus-native runner a span batch (:meth:`for_reply`), which the edge hands back here
    (:meth:`carry`); either way they go out inside the edge's batch. JetStream storing one message
    per node and call was about a third of what tracing cost (nats-server's CPU per traced
    call: +48 µs over an untraced one, two messages). A reply that will come too
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
        self._head = batch_head(service, node)
        self._loop = asyncio.get_running_loop()
        self._pending: dict[str, _Pending] = {}
        """Bucket -> its encoded spans and carried batches, since the last flush."""
        self._count = 0
        self._held: dict[str, list[Row]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self.dropped = 0
        """Span messages (a bucket's calls each) lost because the bus refused them."""
        self.also: list[Callable[[Row], None]] = []
        """The node's other exporters (OTLP): a record (an adapter's for its Reply, an
        edge's of a call) does not end through them as a span does, so it is handed to
        them from here (:meth:`reply_spans`, :meth:`on_call`)."""

    def on_end(self, span: Row) -> None:
        """Spans end on the event loop (busgate ends none elsewhere)."""
        request_id = span[ATTRIBUTES].get(REQUEST_ID, "")
        if self._held:
            held = self._held.get(request_id)
            if held is not None:
                held.append(span)
                return
        self._add(bucket(span[TRACE_ID], str(request_id)), 0, encode_span(span))

    def on_call(self, call: Handling) -> None:
        """An edge's SERVER span ended, as its record (``Tracing.handling``)."""
        self._add(bucket(call.trace_id, call.values[4]), 2, call.encoded())
        if self.also:
            self._hand_on(call)

    def _hand_on(self, record: Serving | Handling) -> None:
        """A record's row to the node's other exporters (:attr:`also`)."""
        row = record.row()
        for exporter in self.also:
            exporter(row)

    def _add(self, key: str, which: int, data: bytes) -> None:
        """``data`` into the bucket ``key``'s pending spans (``which`` 0), carried batches
        (1) or calls' records (2)."""
        if self._count >= MAX_BATCH:
            self._flush()
        found = self._pending.get(key)
        if found is None:
            found = self._pending[key] = ([], [], [])
        found[which].append(data)
        self._count += 1
        if self._timer is None:
            self._timer = self._loop.call_later(self.delay, self._flush)

    def hold(self, request_id: str) -> None:
        """Keep the spans of this call that end from now on, for its Reply."""
        self._held[request_id] = []

    def for_reply(self, span: Span, request_id: str, deadline: float) -> bytes:
        """End a call's span as its Reply goes, and the call's held spans for that Reply
        (one encoded batch, b"": none); none when its edge has given up or is about to
        (:func:`_too_late`): the caller releases them later and they are published from
        here (:meth:`release`)."""
        if _too_late(deadline):
            return b""
        span.end()
        return self._held_batch(request_id)

    def _held_batch(self, request_id: str) -> bytes:
        """A call's held spans as one encoded batch (b"": none), no longer held."""
        rows = self._held.pop(request_id, None)
        return encode_batch(self.service, self.node, rows) if rows else b""

    def reply_spans(self, responder: Responder) -> tuple[bytes, bytes]:
        """``ReplySpans.reply_spans`` of a call whose spans are held: ends its CONSUMER
        record (``responder.span``, a :class:`~busgate.bus.spans.Serving`) as its Reply
        goes, and gives it and the call's other held spans for that Reply; nothing when
        its edge has given up or is about to (as :meth:`for_reply`). For an edge that
        takes no ``Reply.served`` the call's span is a ``Span``, and a batch goes."""
        serving, req = responder.span, responder.request
        if responder.failure:
            serving.error(responder.failure)
        if not isinstance(serving, Serving):  # an edge that only reads Reply.spans
            return b"", self.for_reply(serving, req.id, req.deadline)
        if _too_late(req.deadline):
            return b"", b""
        served = serving.finish(self.service, self.node)
        if self.also:
            self._hand_on(serving)
        return served, self._held_batch(req.id)

    def unsent(self, responder: Responder, spans: bytes) -> None:
        """``ReplySpans.unsent``: a call's spans its Reply could not take go out from here,
        in this node's next batch."""
        serving = responder.span
        if isinstance(serving, Serving):
            self.on_end(serving.row())
        if spans:
            self.carry(serving.trace_id, responder.request.id, spans)

    def release(self, request_id: str) -> None:
        """Stop holding a call's spans; those held are published as any others."""
        for span in self._held.pop(request_id, None) or ():
            self.on_end(span)

    def carry(self, trace_id: str, request_id: str, data: bytes) -> None:
        """Another node's encoded batch of a call (from its Reply): it goes out with this
        node's spans of the call, in one message."""
        self._add(bucket(trace_id, request_id), 1, data)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, {}
        self._count = 0
        if pending:
            task = self._loop.create_task(self._send(pending))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, pending: dict[str, _Pending]) -> None:
        batches: list[tuple[str, bytes]] = []
        for key, parts in pending.items():
            self._join(key, parts, batches)
        try:
            lost = await self.sink.publish_many(batches)
        except Exception as exc:
            if not self.dropped:
                log.warning("spans not exported to the bus: %r", exc)
            lost = len(batches)
        self.dropped += lost

    def _join(self, key: str, parts: _Pending, out: list[tuple[str, bytes]]) -> None:
        """One message for the bucket, or several, each within the sink's limit (a span,
        carried batch or record alone over it goes alone, and the sink refuses it)."""
        room = self.sink.max_message - len(self._head) - 15  # and three array headers
        if sum(map(len, parts[0])) + sum(map(len, parts[1])) + sum(map(len, parts[2])) <= room:
            out.append((key, join_batch(self._head, *parts)))  # the usual case: it fits
            return
        chunk: _Pending = ([], [], [])
        size = 0
        for which, items in enumerate(parts):
            for data in items:
                if size and size + len(data) > room:
                    out.append((key, join_batch(self._head, *chunk)))
                    chunk, size = ([], [], []), 0
                chunk[which].append(data)
                size += len(data)
        out.append((key, join_batch(self._head, *chunk)))

    async def aclose(self) -> None:
        """Publish what is buffered, then close the sink."""
        for request_id in list(self._held):
            self.release(request_id)
        self._flush()
        if self._sending:
            await asyncio.wait(self._sending, timeout=5)
        await self.sink.close()


def _too_late(deadline: float) -> bool:
    """Whether a reply sent now may reach its edge after the edge gave up
    (:data:`~busgate.bus.tracing.REPLY_MARGIN`): its spans must not travel in it."""
    return bool(deadline) and time.time() > deadline - REPLY_MARGIN


# -- reading back (``busgate trace``) ---------------------------------------------------


async def read_call(
    url: str, prefix: str, *, trace_id: str = "", request_id: str = ""
) -> list[bytes]:
    """Every span message that holds spans of a trace id or a request id, oldest first. A
    message holds other calls' spans too (its bucket's): ``busgate.trace`` keeps the call's."""
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
        f"{names.trace()}.{trace_bucket(trace_id)}.*"
        if trace_id
        else f"{names.trace()}.*.{request_bucket(request_id)}"
    )
    needle = (trace_id or request_id).encode()
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
                if needle in msg.data:  # msgpack keeps strings as they are
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
    key = trace_bucket(trace_id).encode() if trace_id else b""
    consumer = await _kafka_consumer(url, names.trace(), end=False, key=key)
    if consumer is None:
        return []
    found: list[bytes] = []
    needle = (trace_id or request_id).encode()
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
                    if needle in record.value:  # msgpack keeps strings as they are
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
