"""Kafka transport (aiokafka).

Topics (see DESIGN.md): requests for system S go to ``PREFIX.req.S``, read by the consumer
group ``PREFIX.adapter.S`` so a system's adapters share the load; replies and stream steps to
edge node N go to ``PREFIX.reply.N``; Presence heartbeats and Cancels are broadcast on
``PREFIX.control``; durable commands go to ``PREFIX.cmd``.

Every node reads its reply topic and the control topic with one consumer *without* a group:
it assigns itself all their partitions and starts at the end, so there is no group join to
wait for and no offsets to commit. Requests are keyed by request id, everything else by the
sending node (replies and steps carry no headers to take an id from), so the steps of one
stream stay in one partition and in order, whatever number of partitions a topic ended up
with.

Things aiokafka does not do by itself, done here by a supervisor task (every
``health_interval`` seconds):

* tell whether the broker is there: a metadata request for this node's topics. ``connected``
  is that answer (a failed send clears it too, and fails the sends still awaiting their
  acknowledgement), so calls during an outage fail fast with 503 instead of waiting out
  aiokafka's 40 s defaults;
* create the topics this node needs when they are missing (a broker restarted without
  persistent storage, or someone deleted them) and add partitions to request topics that were
  auto-created with fewer than ``request_partitions``;
* follow partition changes: re-assign the reply and control topics (keeping positions), and
  have a group consumer refresh its metadata at once, so its group rebalances now;
* commit the request groups' offsets (see ``_group_member`` for why not aiokafka's
  auto-commit);
* restart a consumer whose read loop died.

Each read loop also watches for a log that now ends below its position (the topic was
recreated): a real Kafka broker answers such a fetch with OFFSET_OUT_OF_RANGE and aiokafka
resets the position, but not every Kafka-protocol broker does, so such partitions are read
again from their beginning.

Groups: a partition of a request topic without a committed offset (a new group, or the group
state was lost with the broker) starts at the first request produced since this adapter
started, less ``replay_window`` seconds -- not at the start of the topic's history, and not at
its end, which would drop requests sent while the group was still joining. Expired requests
are dropped by the base class anyway.

Fetch latency: a broker that long-polls returns a fetch as soon as data arrives, so a long
``fetch_max_wait_ms`` costs nothing there; some Kafka-protocol brokers hold a fetch for its
wait whether data arrives or not (Tansu, used in the tests, answers after about half of it).
Consumers therefore fetch with a short wait (``fetch_wait_ms``) while they are busy --
requests awaiting replies, messages received in the last ``hot_window`` seconds -- and with a
long one (``idle_fetch_wait_ms``) when idle, so an idle node does not spin. On a real Kafka
cluster both may be set to 500. The busy wait is 5 ms, as the bench's floor uses: every fetch
costs the broker and the client CPU, and against Tansu 2 ms made twice the fetches for no
gain in latency at one request in flight (p50 about the same, p99 worse) while 64 in flight
ran at ~0.70 of the floor's throughput instead of ~0.82 (two A/B runs, ``bench``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    TopicPartition,
)
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.errors import KafkaError, KafkaTimeoutError

from busgate.bus import headers as hdr
from busgate.bus.base import Bus
from busgate.bus.tasks import stop_task
from busgate.contracts.errors import BusUnavailable

log = logging.getLogger("busgate.bus.kafka")

_NO_ERROR = 0
PRESENCE_REPLAY = 6.0
"""Seconds of control messages a starting node reads back (one presence TTL)."""
_TOPIC_ALREADY_EXISTS = 36

OnRecord = Callable[[str, bytes], None]


def _by_key(key: bytes, partitions: list[int]) -> int:
    """One of ``partitions`` (sorted) by key. CRC-32, because aiokafka's default murmur2 is
    pure Python and costs more than the rest of sending a message."""
    return partitions[zlib.crc32(key) % len(partitions)]


def _partition(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """The producer's partitioner: by key (request id, or node for replies and control
    messages), so a stream's steps stay in order."""
    if key is None:
        return random.choice(available or all_partitions)
    return _by_key(key, sorted(all_partitions))


async def default_replication(admin: Any) -> int:
    """Replication of the topics busgate creates: the number of brokers, at most 3."""
    cluster = await admin.describe_cluster()
    return max(1, min(3, len(cluster.get("brokers", []))))


def _relay(waiter: asyncio.Future[None], delivery: asyncio.Future[Any]) -> None:
    """Pass a delivery's outcome on to the future a send awaits."""
    if waiter.done():
        return
    if delivery.cancelled():
        waiter.set_exception(BusUnavailable("the message was not delivered"))
    elif (exc := delivery.exception()) is not None:
        waiter.set_exception(exc)
    else:
        waiter.set_result(None)


def _set_fetch_wait(consumer: Any, wait_ms: int) -> None:
    """Change how long the broker may hold this consumer's next fetch.

    aiokafka reads the value for every fetch it builds but has no public setter; without the
    attribute (another aiokafka version) the consumer keeps the wait it was created with.
    """
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is not None and hasattr(fetcher, "_fetch_max_wait_ms"):
        fetcher._fetch_max_wait_ms = wait_ms


def _group_member(consumer: Any) -> bool:
    """Whether a group consumer holds a valid membership (generation) right now.

    After the group forgot the member (its state was lost with a broker restart) aiokafka
    resets the generation to -1 and then commits its *old* positions once more before
    rejoining; Kafka accepts a commit with generation -1 for an empty group, so those
    positions -- beyond the end of the recreated topic -- would become the group's offsets.
    Offsets are therefore committed here, and only while this holds.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    generation = getattr(coordinator, "generation", -1)
    return isinstance(generation, int) and generation >= 0


class _Reader:
    """One aiokafka consumer and the task that feeds its records to ``on_record``.

    For a group consumer (``group=True``) it also keeps the offsets of what it handed on and
    commits them (``commit``) -- aiokafka's auto-commit is off, see ``_group_member``.
    """

    def __init__(
        self,
        name: str,
        consumer: Any,
        on_record: OnRecord,
        *,
        hot_ms: int,
        idle_ms: int,
        group: bool = False,
    ) -> None:
        self.name = name
        self.consumer = consumer
        self.on_record = on_record
        self.hot_ms = hot_ms
        self.idle_ms = idle_ms
        self.wait_ms = idle_ms
        self.group = group
        self.last_active = 0.0
        self.task: asyncio.Task[None] | None = None
        self.stopping = False
        self.consumed: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int] = {}

    def start(self) -> None:
        self.task = asyncio.create_task(self._read(), name=f"kafka-read-{self.name}")

    @property
    def alive(self) -> bool:
        return self.task is not None and not self.task.done()

    def heat(self) -> None:
        """Busy: fetch with the short wait from the next fetch on."""
        self.last_active = time.monotonic()
        if self.wait_ms != self.hot_ms:
            self.wait_ms = self.hot_ms
            _set_fetch_wait(self.consumer, self.hot_ms)

    def cool(self, now: float, window: float) -> None:
        if self.wait_ms != self.idle_ms and now - self.last_active > window:
            self.wait_ms = self.idle_ms
            _set_fetch_wait(self.consumer, self.idle_ms)

    async def _read(self) -> None:
        consumer = self.consumer
        failing = False
        checked = 0.0
        while not self.stopping:
            try:
                batches = await consumer.getmany(timeout_ms=100)
            except KafkaError as exc:
                if not failing:
                    log.warning("kafka: %s: read failed (%r); retrying", self.name, exc)
                failing = True
                await asyncio.sleep(0.2)
                continue
            failing = False
            for tp, records in batches.items():
                for record in records:
                    if record.value is None:
                        continue
                    try:
                        self.on_record(tp.topic, record.value)
                    except Exception:
                        log.exception("kafka: %s: record from %s not handled", self.name, tp)
                if self.group and records:
                    self.consumed[tp] = records[-1].offset + 1
            now = time.monotonic()
            if now - checked >= 0.1:
                checked = now
                await self._rewind_recreated()

    async def _rewind_recreated(self) -> None:
        """Read from the beginning the partitions whose log now ends below our position.

        Every fetch response carries the partition's high watermark, and a position never
        exceeds it -- unless the topic was deleted and recreated (a broker that lost its
        data): a real Kafka broker then answers OFFSET_OUT_OF_RANGE and aiokafka resets the
        position itself, but not every Kafka-protocol broker does. Checked often, so little
        can land in the new log below the stale position before it is noticed.
        """
        consumer = self.consumer
        behind = []
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            try:
                position = await asyncio.wait_for(consumer.position(tp), 0.05)
            except (TimeoutError, KafkaError):
                continue
            if position > highwater:
                behind.append(tp)
        if behind:
            log.warning(
                "kafka: %s: %s now end below our position (topic recreated?); "
                "reading them from the beginning",
                self.name,
                ", ".join(f"{tp.topic}[{tp.partition}]" for tp in behind),
            )
            for tp in behind:
                self.consumed.pop(tp, None)
            with contextlib.suppress(TimeoutError, KafkaError):
                await asyncio.wait_for(consumer.seek_to_beginning(*behind), 2.0)

    async def commit(self) -> None:
        """Commit the offsets handed on since the last commit (group consumers only)."""
        due = {tp: n for tp, n in self.consumed.items() if self.committed.get(tp) != n}
        if not due or not _group_member(self.consumer):
            return
        try:
            await asyncio.wait_for(self.consumer.commit(due), 2.0)
        except (TimeoutError, KafkaError) as exc:
            log.debug("kafka: %s: commit failed: %r", self.name, exc)
            return
        self.committed.update(due)

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            self.consumed.pop(tp, None)
            self.committed.pop(tp, None)

    async def stop(self, grace: float) -> None:
        # The flag as well as the cancel: on Python 3.11 ``asyncio.wait_for`` can swallow a
        # cancellation that lands just as its inner call completes, and the read loop would
        # go on for ever; a bounded wait keeps close() from hanging on it either way.
        self.stopping = True
        await stop_task(self.task, grace)
        if self.group:
            await self.commit()
        try:
            await asyncio.wait_for(self.consumer.stop(), grace)
        except (TimeoutError, KafkaError, OSError) as exc:
            log.warning("kafka: %s: consumer did not stop cleanly: %r", self.name, exc)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Commits before partitions go, positions partitions that come without an offset.

    Those start at the first message produced at or after ``since_ms`` (or at the end when
    there is none), instead of the whole history or only what comes after the join.
    """

    def __init__(
        self,
        reader: _Reader,
        since_ms: int,
        timeout: float,
        on_assigned: Callable[[], None] = lambda: None,
    ) -> None:
        self.reader = reader
        self.since_ms = since_ms
        self.timeout = timeout
        self.on_assigned = on_assigned
        self.assigned = asyncio.Event()
        """Set once the first assignment is positioned."""

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        revoked = list(revoked)
        await self.reader.commit()  # no-op when the group forgot us
        self.reader.forget(revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        consumer = self.reader.consumer
        try:
            async with asyncio.timeout(self.timeout):
                fresh = [tp for tp in assigned if await consumer.committed(tp) is None]
                if fresh:
                    found = await consumer.offsets_for_times({tp: self.since_ms for tp in fresh})
                    to_end = []
                    for tp in fresh:
                        hit = found.get(tp)
                        # Kafka answers "no such message" with offset -1 (None here); some
                        # brokers send offset 0 with timestamp -1 instead.
                        if hit is None or hit.timestamp < 0:
                            to_end.append(tp)
                        else:
                            consumer.seek(tp, hit.offset)
                    if to_end:
                        await consumer.seek_to_end(*to_end)
                    log.debug(
                        "kafka: %s: partitions %s had no offset; start at %s (at the end: %s)",
                        self.reader.name,
                        sorted(tp.partition for tp in fresh),
                        {tp.partition: hit for tp, hit in found.items()},
                        sorted(tp.partition for tp in to_end),
                    )
        except (TimeoutError, KafkaError) as exc:
            log.warning(
                "kafka: %s: could not position new partitions (%r); using the reset policy",
                self.reader.name,
                exc,
            )
        finally:
            self.assigned.set()
            self.on_assigned()


class KafkaBus(Bus):
    requires_presence = True

    def __init__(
        self,
        servers: str | list[str],
        *,
        node: str,
        prefix: str = "busgate",
        connect_timeout: float = 10.0,
        send_timeout: float = 2.0,
        command_timeout: float = 5.0,
        request_partitions: int = 2,
        replication_factor: int | None = None,
        fetch_wait_ms: int = 5,
        idle_fetch_wait_ms: int = 100,
        hot_window: float = 2.0,
        health_interval: float = 0.5,
        join_timeout: float = 30.0,
        replay_window: float = 60.0,
        session_timeout: float = 6.0,
        handoff: float = 0.5,
    ) -> None:
        """``servers``: bootstrap servers, ``host:port`` separated by commas (or a list).

        ``replication_factor`` of the topics this node creates defaults to the number of
        brokers, at most 3. See the module docstring for the fetch waits.
        """
        super().__init__(node=node, prefix=prefix)
        self.servers = servers if isinstance(servers, str) else ",".join(servers)
        self.connect_timeout = connect_timeout
        self.send_timeout = send_timeout
        self.command_timeout = command_timeout
        self.request_partitions = request_partitions
        self.replication_factor = replication_factor
        self.fetch_wait_ms = fetch_wait_ms
        self.idle_fetch_wait_ms = idle_fetch_wait_ms
        self.hot_window = hot_window
        self.health_interval = health_interval
        self.join_timeout = join_timeout
        self.replay_window = replay_window
        self.session_timeout = session_timeout
        self.handoff = handoff

        self._reply_topic = self.names.reply(node)
        self._topics: dict[str, int] = {}
        """The topics this node makes sure exist, with the partitions each should have."""
        self._admin: Any = None
        self._producer: Any = None
        self._command_producer: Any = None
        self._command_lock = asyncio.Lock()
        self._node_reader: _Reader | None = None
        self._request_readers: dict[str, _Reader] = {}
        self._joins: dict[str, _Rebalance] = {}
        self._join_waited: set[str] = set()
        self._supervisor: asyncio.Task[None] | None = None
        self._acks: set[asyncio.Future[None]] = set()
        """Sends waiting for the broker's acknowledgement (see ``_mark_down``)."""
        self._healthy = False
        self._closing = False
        self._started_at = time.time()
        self._request_prefix = self.names.request("")

    # -- state ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._producer is not None and self._healthy and not self._closing

    def reply_address(self, request_id: str) -> str:
        return self._reply_topic

    def _mark_down(self, why: str) -> None:
        if self._healthy:
            log.warning("kafka: %s; calls fail fast until the broker answers again", why)
        self._healthy = False
        # Sends still waiting for their acknowledgement give up now rather than when
        # aiokafka expires their batch (send_timeout).
        for waiter in self._acks:
            if not waiter.done():
                waiter.set_exception(BusUnavailable("the Kafka broker is not answering"))

    # -- connecting -----------------------------------------------------------------

    async def connect(self) -> None:
        self._started_at = time.time()
        self._closing = False
        try:
            async with asyncio.timeout(self.connect_timeout):
                self._admin = AIOKafkaAdminClient(
                    bootstrap_servers=self.servers,
                    client_id=f"busgate-{self.node}-admin",
                    request_timeout_ms=10_000,
                )
                await self._admin.start()
                if self.replication_factor is None:
                    self.replication_factor = await default_replication(self._admin)
                self._topics[self._reply_topic] = 1
                self._topics[self.names.control] = 1
                await self._ensure_topics([self._reply_topic, self.names.control])
                self._producer = AIOKafkaProducer(
                    bootstrap_servers=self.servers,
                    client_id=f"busgate-{self.node}",
                    acks=1,
                    linger_ms=0,
                    request_timeout_ms=int(self.send_timeout * 1000),
                    partitioner=_partition,
                )
                await self._producer.start()
                await self._start_node_reader()
        except (KafkaError, OSError, TimeoutError) as exc:
            await self._close_transport()
            raise BusUnavailable(f"cannot connect to Kafka at {self.servers}: {exc!r}") from None
        self._healthy = True
        self._supervisor = asyncio.create_task(
            self._supervise(), name=f"kafka-supervise-{self.node}"
        )

    async def _ensure_topics(self, topics: Iterable[str]) -> dict[str, int]:
        """Create the missing ones of ``topics``, grow request topics that have too few
        partitions; return each topic's partition count."""
        wanted = {t: self._topics[t] for t in topics}
        response = await self._admin.create_topics(
            [NewTopic(t, n, self.replication_factor or 1) for t, n in wanted.items()]
        )
        for entry in response.topic_errors:
            topic, code = entry[0], entry[1]
            if code == _NO_ERROR:
                log.info("kafka: created topic %s", topic)
            elif code != _TOPIC_ALREADY_EXISTS:
                log.warning("kafka: cannot create topic %s (error %s)", topic, code)
        counts = await self._partition_counts(list(wanted))
        grow = {
            t: NewPartitions(n) for t, n in wanted.items() if n > 1 and 0 < counts.get(t, 0) < n
        }
        if grow:
            try:
                await self._admin.create_partitions(grow)
                log.info("kafka: added partitions to %s", sorted(grow))
                counts = await self._partition_counts(list(wanted))
            except KafkaError as exc:
                log.warning("kafka: cannot add partitions to %s: %r", sorted(grow), exc)
        return counts

    async def _partition_counts(self, topics: list[str]) -> dict[str, int]:
        described = await self._admin.describe_topics(topics)
        return {t["topic"]: len(t["partitions"]) for t in described if t["error_code"] == _NO_ERROR}

    def _node_record(self, topic: str, value: bytes) -> None:
        if topic == self._reply_topic:
            assert self._node_reader is not None
            self._node_reader.heat()
            self._on_reply(value)
        else:
            self._on_control(value)

    async def _start_node_reader(self, positions: dict[TopicPartition, int] | None = None) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.servers,
            client_id=f"busgate-{self.node}-node",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.idle_fetch_wait_ms,
            fetch_min_bytes=1,
        )
        await consumer.start()
        reader = _Reader(
            "node",
            consumer,
            self._node_record,
            hot_ms=self.fetch_wait_ms,
            idle_ms=self.idle_fetch_wait_ms,
        )
        try:
            tps = await self._node_partitions()
            consumer.assign(list(tps))
            await self._position(consumer, tps, positions or {}, new_at_end=True)
            if not positions:
                await self._replay_recent_control(consumer, tps)
        except BaseException:
            await reader.stop(2)
            raise
        self._node_reader = reader
        reader.start()

    async def _replay_recent_control(self, consumer: Any, tps: set[TopicPartition]) -> None:
        """Start the control topic a few heartbeats back, so a new node knows at once which
        adapters are alive instead of answering 503 until their next heartbeat.

        A replayed heartbeat counts as fresh, so an adapter that died just before may be taken
        for alive for up to one TTL more; its requests then end at their deadline (504).
        """
        control = [tp for tp in tps if tp.topic == self.names.control]
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
                            self._on_control(record.value)
        except (TimeoutError, KafkaError) as exc:
            log.info("kafka: control replay incomplete (%r); the rest arrives as it comes", exc)

    async def _node_partitions(self) -> set[TopicPartition]:
        counts = await self._partition_counts([self._reply_topic, self.names.control])
        return {
            TopicPartition(topic, p)
            for topic in (self._reply_topic, self.names.control)
            for p in range(counts.get(topic, 1))
        }

    @staticmethod
    async def _position(
        consumer: Any,
        tps: set[TopicPartition],
        positions: dict[TopicPartition, int],
        *,
        new_at_end: bool,
    ) -> None:
        """Seek known partitions to ``positions``, the others to their end or beginning."""
        for tp, offset in positions.items():
            if tp in tps:
                consumer.seek(tp, offset)
        new = [tp for tp in tps if tp not in positions]
        if new:
            if new_at_end:
                await consumer.seek_to_end(*new)
            else:
                await consumer.seek_to_beginning(*new)

    # -- sending --------------------------------------------------------------------

    async def _send(
        self, dest: str, data: bytes, headers: dict[str, str], *, reply: str = ""
    ) -> None:
        # No timer per message (asyncio.timeout costs as much as the rest of this call):
        # the producer's request_timeout_ms is send_timeout, and aiokafka bounds every step
        # by it -- the metadata wait, a full buffer, and the batch's delivery, which fails
        # once expired.
        producer = self._producer
        if producer is None or not self._healthy or self._closing:
            raise BusUnavailable("the Kafka connection is down; try again shortly")
        if self.pending and self._node_reader is not None:
            self._node_reader.heat()  # replies are awaited: fetch them promptly
        key = headers.get(hdr.REQUEST_ID, self.node).encode()
        kafka_headers = [(k, v.encode()) for k, v in headers.items()]
        partition = None
        if dest.startswith(self._request_prefix):
            partition = self._live_partition(producer, dest, key)
        try:
            delivery = await producer.send(
                dest, data, key=key, headers=kafka_headers, partition=partition
            )
            if delivery.done():
                delivery.result()
                return
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            delivery.add_done_callback(functools.partial(_relay, waiter))
            self._acks.add(waiter)
            try:
                await waiter
            finally:
                self._acks.discard(waiter)
        except KafkaError as exc:
            if exc.retriable or isinstance(exc, KafkaTimeoutError):
                # The broker (or this partition's leader) is out of reach, not just this
                # message at fault (too large, not authorized, ...).
                self._mark_down(f"produce to {dest} failed ({type(exc).__name__})")
            raise BusUnavailable(f"Kafka produce failed: {type(exc).__name__}") from None

    def _live_partition(self, producer: Any, topic: str, key: bytes) -> int | None:
        """A partition of request topic ``topic`` that a live adapter holds (by the Presence
        of the system's adapters), or None to let the partitioner choose among all: an
        adapter that said goodbye, or fell silent, has its partitions skipped at once,
        while its group still takes seconds to hand them to the others."""
        held = self.presence.partitions(topic[len(self._request_prefix) :])
        if not held:
            return None
        known = producer.client.cluster.partitions_for_topic(topic)
        if known is None:
            return None
        held = [p for p in held if p in known]
        return _by_key(key, held) if held else None

    async def _ready_command_producer(self) -> Any:
        async with self._command_lock:
            if self._command_producer is None:
                topic = self.names.command()
                self._topics[topic] = self.request_partitions
                await self._ensure_topics([topic])
                producer = AIOKafkaProducer(
                    bootstrap_servers=self.servers,
                    client_id=f"busgate-{self.node}-cmd",
                    acks="all",
                    linger_ms=0,
                    partitioner=_partition,
                    request_timeout_ms=int(self.command_timeout * 1000),
                )
                try:
                    await producer.start()
                except BaseException:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(producer.stop(), 2)
                    raise
                self._command_producer = producer
            return self._command_producer

    async def publish_command(
        self, name: str, data: bytes, headers: dict[str, str] | None = None
    ) -> None:
        if not self.connected:
            raise BusUnavailable("the Kafka connection is down; try again shortly")
        kafka_headers = [(k, v.encode()) for k, v in (headers or {}).items()]
        try:
            async with asyncio.timeout(self.command_timeout):
                producer = await self._ready_command_producer()
                delivery = await producer.send(
                    self.names.command(), data, key=name.encode(), headers=kafka_headers
                )
                await delivery
        except TimeoutError:
            self._mark_down(f"no acknowledgement from Kafka within {self.command_timeout:g} s")
            raise BusUnavailable("Kafka did not acknowledge the command in time") from None
        except KafkaError as exc:
            raise BusUnavailable(f"Kafka did not acknowledge: {type(exc).__name__}") from None

    # -- adapters -------------------------------------------------------------------

    async def _listen_requests(self, system: str) -> None:
        topic = self.names.request(system)
        self._topics[topic] = self.request_partitions
        try:
            await asyncio.wait_for(self._ensure_topics([topic]), self.connect_timeout)
            await asyncio.wait_for(self._start_request_reader(system), self.connect_timeout)
        except (KafkaError, OSError, TimeoutError) as exc:
            raise BusUnavailable(f"cannot consume {topic}: {exc!r}") from None

    async def _start_request_reader(self, system: str) -> None:
        topic = self.names.request(system)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.servers,
            client_id=f"busgate-{self.node}-{system}",
            group_id=self.names.group(system),
            enable_auto_commit=False,  # committed by _Reader.commit
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.idle_fetch_wait_ms,
            fetch_min_bytes=1,
            metadata_max_age_ms=30_000,
            # Kafka's smallest default (group.min.session.timeout.ms): a dead adapter's
            # partitions go to the others after 6 s rather than 10 s.
            session_timeout_ms=int(self.session_timeout * 1000),
            heartbeat_interval_ms=int(self.session_timeout * 1000 / 3),
        )

        def on_request(_topic: str, value: bytes) -> None:
            reader.heat()
            self._on_request(value)

        reader = _Reader(
            f"requests {system}",
            consumer,
            on_request,
            hot_ms=self.fetch_wait_ms,
            idle_ms=self.idle_fetch_wait_ms,
            group=True,
        )
        since_ms = int((self._started_at - self.replay_window) * 1000)
        listener = _Rebalance(reader, since_ms, timeout=10, on_assigned=self._reannounce)
        consumer.subscribe([topic], listener=listener)
        await consumer.start()
        self._request_readers[system] = reader
        self._joins[system] = listener
        reader.start()

    def _held_partitions(self) -> dict[str, tuple[int, ...]]:
        return {
            system: tuple(sorted(tp.partition for tp in reader.consumer.assignment()))
            for system, reader in self._request_readers.items()
        }

    def _reannounce(self) -> None:
        """Tell the edges at once which partitions this adapter holds after a rebalance,
        rather than at the next heartbeat (the first announcement waits for the join)."""
        if self._served and self._join_waited and not self._closing:
            self._spawn(self._announce_quietly())

    async def _announce_quietly(self) -> None:
        try:
            await self.announce(self._ttl)
        except BusUnavailable:
            log.debug("kafka: presence after a rebalance not sent: bus unavailable")

    async def _stop_requests(self) -> None:
        """Stop the request consumers: each commits what it handed on and leaves its group,
        whose other members then take its partitions from those offsets.

        First, for ``handoff`` seconds, go on reading: edges that sent a request here before
        they had this adapter's goodbye would otherwise see it wait for the rebalance."""
        await asyncio.sleep(self.handoff)
        readers = list(self._request_readers.values())
        self._request_readers.clear()
        self._joins.clear()
        await asyncio.gather(*(r.stop(5) for r in readers))

    async def announce(self, ttl: float = 6.0) -> None:
        """Broadcast Presence, the first time only once the request consumers have joined
        their groups (bounded by ``join_timeout``): an adapter announces what it can take."""
        if ttl > 0:
            waiting = {s: j for s, j in self._joins.items() if s not in self._join_waited}
            if waiting:
                self._join_waited.update(waiting)
                try:
                    async with asyncio.timeout(self.join_timeout):
                        await asyncio.gather(*(j.assigned.wait() for j in waiting.values()))
                except TimeoutError:
                    log.warning(
                        "kafka: consumer groups for %s not joined after %g s; announcing anyway",
                        sorted(waiting),
                        self.join_timeout,
                    )
        await super().announce(ttl)

    # -- supervision ----------------------------------------------------------------

    async def _supervise(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.health_interval)
            try:
                await self._check()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("kafka: supervisor check failed")

    async def _check(self) -> None:
        now = time.monotonic()
        node = self._node_reader
        if node is not None and self.pending:
            node.heat()
        for reader in self._readers():
            reader.cool(now, self.hot_window)

        try:
            async with asyncio.timeout(max(self.health_interval, 1.0)):
                counts = await self._partition_counts(list(self._topics))
        except (KafkaError, OSError, TimeoutError) as exc:
            self._mark_down(f"broker not answering ({type(exc).__name__})")
            return
        if not self._healthy:
            log.info("kafka: broker answering again")
        self._healthy = True

        short = [t for t, n in self._topics.items() if counts.get(t, 0) < n]
        if short:
            try:
                async with asyncio.timeout(5):
                    counts.update(await self._ensure_topics(short))
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning("kafka: cannot recreate topics %s: %r", short, exc)
                return

        await self._check_node_reader(counts)
        for system, reader in list(self._request_readers.items()):
            if self._request_readers.get(system) is not reader:
                continue  # stopped meanwhile (stop_serving)
            if not reader.alive and not self._closing:
                log.warning("kafka: request reader for %s died; restarting it", system)
                await reader.stop(2)
                await self._start_request_reader(system)
                continue
            self._refresh_if_stale(reader.consumer, self.names.request(system), counts)
            await reader.commit()

    @staticmethod
    def _refresh_if_stale(consumer: Any, topic: str, counts: dict[str, int]) -> None:
        """Have a group consumer refresh its metadata now when ``topic`` changed partitions.

        aiokafka notices new partitions at its next periodic metadata refresh and only then
        rebalances the group; after a broker restart that auto-created the topic with another
        partition count, that would be one more rebalance much later, not right away.
        """
        known = consumer.partitions_for_topic(topic)
        if counts.get(topic) and (known is None or len(known) != counts[topic]):
            client = getattr(consumer, "_client", None)
            if client is not None:
                client.force_metadata_update()

    def _readers(self) -> list[_Reader]:
        readers = list(self._request_readers.values())
        if self._node_reader is not None:
            readers.append(self._node_reader)
        return readers

    async def _check_node_reader(self, counts: dict[str, int]) -> None:
        reader = self._node_reader
        if reader is None:
            return
        if not reader.alive:
            log.warning("kafka: reply/control reader died; restarting it")
            await reader.stop(2)
            self._node_reader = None
            await self._start_node_reader()
            return
        consumer = reader.consumer
        want = {
            TopicPartition(topic, p)
            for topic in (self._reply_topic, self.names.control)
            for p in range(counts.get(topic, 0))
        }
        have = set(consumer.assignment())
        if want and not want <= have:
            positions = await self._positions(consumer, have)
            log.info("kafka: reading %d partitions of reply/control topics now", len(want))
            consumer.assign(list(want | have))
            # Partitions that appeared after we started hold only news: read them whole.
            await asyncio.wait_for(
                self._position(consumer, want | have, positions, new_at_end=False), 5
            )

    @staticmethod
    async def _positions(consumer: Any, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        positions: dict[TopicPartition, int] = {}
        for tp in tps:
            try:
                positions[tp] = await asyncio.wait_for(consumer.position(tp), 0.5)
            except (TimeoutError, KafkaError):
                continue
        return positions

    # -- closing --------------------------------------------------------------------

    async def _close_transport(self) -> None:
        self._closing = True
        self._healthy = False
        await stop_task(self._supervisor)  # see _Reader.stop
        self._supervisor = None
        readers = self._readers()
        self._node_reader = None
        self._request_readers.clear()
        await asyncio.gather(*(r.stop(5) for r in readers))
        for producer in (self._producer, self._command_producer):
            if producer is not None:
                try:
                    await asyncio.wait_for(producer.stop(), 5)
                except (TimeoutError, KafkaError, OSError) as exc:
                    log.warning("kafka: producer did not stop cleanly: %r", exc)
        self._producer = self._command_producer = None
        if self._admin is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._admin.close(), 5)
            self._admin = None
