"""Kafka transport (aiokafka): the :class:`KafkaBus`, its connection and its supervisor.

Topics (see DESIGN.md): requests for system S go to ``PREFIX.req.S``, read by the consumer
group ``PREFIX.adapter.S`` so a system's adapters share the load (:mod:`.requests`); replies
and stream steps to edge node N go to ``PREFIX.reply.N``; Presence heartbeats and Cancels are
broadcast on ``PREFIX.control``; durable commands go to ``PREFIX.cmd``. Every node reads its
reply topic and the control topic with one consumer without a group (:mod:`.node`).
Requests are keyed by request id, everything else by the sending node (replies and steps
carry no headers to take an id from), so the steps of one stream stay in one partition and
in order, whatever number of partitions a topic ended up with (:mod:`.routing`).

Things aiokafka does not do by itself, done here by a supervisor task (every
``health_interval`` seconds):

* tell whether the broker is there: a metadata request for this node's topics (an error
  says no at once, a timeout when it happens :data:`SLOW_CHECKS` times in a row). ``connected``
  is that answer (a failed send clears it too, and fails the sends still awaiting their
  acknowledgement), so calls during an outage fail fast with 503 instead of waiting out
  aiokafka's 40 s defaults;
* create the topics this node needs when they are missing (a broker restarted without
  persistent storage, or someone deleted them) and add partitions to request topics that were
  auto-created with fewer than ``request_partitions`` (:mod:`.admin`);
* follow partition changes: re-assign the reply and control topics (keeping positions), and
  have a group consumer refresh its metadata at once, so its group rebalances now;
* commit the request groups' offsets (see :func:`.internals.group_member` for why not
  aiokafka's auto-commit);
* restart a consumer whose read loop died.

Each read loop also watches for a log that now ends below its position (the topic was
recreated; :mod:`.reader`).

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
import logging
import time
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError, KafkaTimeoutError, MessageSizeTooLargeError

from busgate.bus import headers as hdr
from busgate.bus import limits
from busgate.bus.base import Bus
from busgate.bus.kafka.admin import Topics, default_replication
from busgate.bus.kafka.internals import force_metadata_update, producer_partitions
from busgate.bus.kafka.node import (
    PRESENCE_REPLAY,
    follow_partitions,
    node_partitions,
    start_node_reader,
)
from busgate.bus.kafka.producing import send_acked, start_producer
from busgate.bus.kafka.reader import Reader
from busgate.bus.kafka.requests import Rebalance, start_request_reader
from busgate.bus.kafka.routing import live_partition
from busgate.bus.security import BusTls, kafka_client
from busgate.bus.tasks import stop_task
from busgate.contracts.errors import BusUnavailable, MessageTooLarge

log = logging.getLogger("busgate.bus.kafka")

SLOW_CHECKS = 2
"""Health checks in a row whose metadata answer must time out before the broker counts as
not answering (an error counts at once)."""

__all__ = ["PRESENCE_REPLAY", "KafkaBus", "default_replication"]


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
        max_request_size: int = limits.DEFAULT_MAX_MESSAGE,
        tls: BusTls | None = None,
    ) -> None:
        """``servers``: bootstrap servers, ``host:port`` separated by commas (or a list).
        ``tls``: SSL to the brokers (``kafka+ssl://``), for every client this node makes.

        ``replication_factor`` of the topics this node creates defaults to the number of
        brokers, at most 3. See the module docstring for the fetch waits.
        ``max_request_size`` (bytes) is the producers'; keep it within the brokers'
        ``message.max.bytes`` (a record the broker refuses fails like one too large here).
        """
        super().__init__(node=node, prefix=prefix)
        self.servers = servers if isinstance(servers, str) else ",".join(servers)
        self.tls = tls
        self.client = kafka_client(self.servers, tls)
        """What every aiokafka client of this node connects with (``bus.security``)."""
        self.connect_timeout = connect_timeout
        self.send_timeout = send_timeout
        self.command_timeout = command_timeout
        self.request_partitions = request_partitions
        self.replication_factor = replication_factor
        self.fetch_wait_ms = fetch_wait_ms
        self.idle_fetch_wait_ms = idle_fetch_wait_ms
        self.hot_window = hot_window
        self.health_interval = health_interval
        self.health_timeout = max(health_interval, 1.0)
        """Seconds the supervisor's metadata request may take (see :data:`SLOW_CHECKS`)."""
        self.join_timeout = join_timeout
        self.replay_window = replay_window
        self.session_timeout = session_timeout
        self.handoff = handoff
        self.max_request_size = max_request_size
        self.max_message = limits.carried(max_request_size)

        self._reply_topic = self.names.reply(node)
        self._topics = Topics(
            self.client, client_id=f"busgate-{node}-admin", replication=replication_factor
        )
        """The topics this node makes sure exist, with the partitions each should have."""
        self._producer: Any = None
        self._command_producer: Any = None
        self._event_topics: dict[str, asyncio.Future[dict[str, int]]] = {}
        self._command_lock = asyncio.Lock()
        self._node_reader: Reader | None = None
        self._request_readers: dict[str, Reader] = {}
        self._joins: dict[str, Rebalance] = {}
        self._join_waited: set[str] = set()
        self._supervisor: asyncio.Task[None] | None = None
        self._acks: set[asyncio.Future[None]] = set()
        """Sends waiting for the broker's acknowledgement (see ``_mark_down``)."""
        self._healthy = False
        self._slow_checks = 0
        """Health checks in a row whose metadata request timed out."""
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
                await self._topics.start()
                self.replication_factor = self._topics.replication
                self._topics.wanted[self._reply_topic] = 1
                self._topics.wanted[self.names.control] = 1
                await self._topics.ensure([self._reply_topic, self.names.control])
                self._producer = await start_producer(
                    self.client,
                    client_id=f"busgate-{self.node}",
                    acks=1,
                    request_timeout=self.send_timeout,
                    max_request_size=self.max_request_size,
                )
                await self._start_node_reader()
        except (KafkaError, OSError, TimeoutError) as exc:
            await self._close_transport()
            raise BusUnavailable(f"cannot connect to Kafka at {self.servers}: {exc!r}") from None
        self._healthy = True
        self._supervisor = asyncio.create_task(
            self._supervise(), name=f"kafka-supervise-{self.node}"
        )

    def _node_record(self, topic: str, value: bytes) -> None:
        if topic == self._reply_topic:
            assert self._node_reader is not None
            self._node_reader.heat()
            self._on_reply(value)
        else:
            self._on_control(value)

    async def _start_node_reader(self, positions: dict[TopicPartition, int] | None = None) -> None:
        topics = (self._reply_topic, self.names.control)
        counts = await self._topics.partition_counts(list(topics))
        reader = await start_node_reader(
            self.client,
            client_id=f"busgate-{self.node}-node",
            tps=node_partitions(topics, counts),
            control=self.names.control,
            on_record=self._node_record,
            on_control=self._on_control,
            hot_ms=self.fetch_wait_ms,
            idle_ms=self.idle_fetch_wait_ms,
            positions=positions,
        )
        self._node_reader = reader
        reader.start()

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
            system = dest[len(self._request_prefix) :]
            held = self.presence.partitions(system)
            if held:
                partition = live_partition(held, producer_partitions(producer, dest), key)
        try:
            await send_acked(
                producer,
                self._acks,
                dest,
                data,
                key=key,
                headers=kafka_headers,
                partition=partition,
            )
        except MessageSizeTooLargeError:  # from the producer's own check, or the broker's
            raise MessageTooLarge(
                f"{len(data)} bytes is more than the {self.max_message} bytes the bus carries"
                " per message"
            ) from None
        except KafkaError as exc:
            if exc.retriable or isinstance(exc, KafkaTimeoutError):
                # The broker (or this partition's leader) is out of reach, not just this
                # message at fault (too large, not authorized, ...).
                self._mark_down(f"produce to {dest} failed ({type(exc).__name__})")
            raise BusUnavailable(f"Kafka produce failed: {type(exc).__name__}") from None

    def audit_address(self, channel: str) -> str:
        """One topic for all channels (the channel is in each event), as for tracking."""
        return self.names.audit()

    async def _prepare_topic(self, dest: str) -> None:
        """Event topics (audit) are created once per node, on their first event; calls that
        come meanwhile wait for that one creation."""
        ready = self._event_topics.get(dest)
        if ready is None:
            self._topics.wanted[dest] = 3
            ready = self._event_topics[dest] = asyncio.ensure_future(self._topics.ensure([dest]))
        try:
            await asyncio.shield(ready)
        except Exception:
            self._event_topics.pop(dest, None)  # the next event tries again
            raise BusUnavailable(f"cannot create topic {dest}") from None

    async def _ready_command_producer(self) -> Any:
        async with self._command_lock:
            if self._command_producer is None:
                topic = self.names.command()
                self._topics.wanted[topic] = self.request_partitions
                await self._topics.ensure([topic])
                self._command_producer = await start_producer(
                    self.client,
                    client_id=f"busgate-{self.node}-cmd",
                    acks="all",
                    request_timeout=self.command_timeout,
                    max_request_size=self.max_request_size,
                )
            return self._command_producer

    async def publish_command(
        self, name: str, data: bytes, headers: dict[str, str] | None = None
    ) -> None:
        if not self.connected:
            raise BusUnavailable("the Kafka connection is down; try again shortly")
        if len(data) > self.max_message:
            raise MessageTooLarge(f"a command of {len(data)} bytes is more than the bus carries")
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
        self._topics.wanted[topic] = self.request_partitions
        try:
            await asyncio.wait_for(self._topics.ensure([topic]), self.connect_timeout)
            await asyncio.wait_for(self._start_request_reader(system), self.connect_timeout)
        except (KafkaError, OSError, TimeoutError) as exc:
            raise BusUnavailable(f"cannot consume {topic}: {exc!r}") from None

    async def _start_request_reader(self, system: str) -> None:
        reader, listener = await start_request_reader(
            self.client,
            client_id=f"busgate-{self.node}-{system}",
            name=f"requests {system}",
            topic=self.names.request(system),
            group=self.names.group(system),
            session_timeout=self.session_timeout,
            hot_ms=self.fetch_wait_ms,
            idle_ms=self.idle_fetch_wait_ms,
            since_ms=int((self._started_at - self.replay_window) * 1000),
            on_request=self._on_request,
            on_assigned=self._reannounce,
        )
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

    async def _track_destination(self, channel: str) -> str:
        """One topic for every channel (keyed by request id, so a channel's events spread)."""
        topic = self.names.track()
        if topic not in self._topics.wanted:
            self._topics.wanted[topic] = 1
            try:
                await asyncio.wait_for(self._topics.ensure([topic]), self.connect_timeout)
            except (KafkaError, OSError, TimeoutError) as exc:
                del self._topics.wanted[topic]
                raise BusUnavailable(f"cannot create {topic}: {exc!r}") from None
        return topic

    async def _stop_requests_for(self, systems: tuple[str, ...]) -> None:
        await asyncio.sleep(self.handoff)  # as in _stop_requests: edges may not know yet
        readers = [r for s in systems if (r := self._request_readers.pop(s, None)) is not None]
        for system in systems:
            self._joins.pop(system, None)
            self._join_waited.discard(system)
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
            async with asyncio.timeout(self.health_timeout):
                counts = await self._topics.partition_counts(list(self._topics.wanted))
        except TimeoutError:
            # A slow answer once is a busy broker or host (the likely cause of a moment of
            # 503s in a loaded test run on 2 cores); slow twice in a row, it is not answering.
            self._slow_checks += 1
            if self._slow_checks >= SLOW_CHECKS:
                self._mark_down("broker not answering (TimeoutError)")
            return
        except (KafkaError, OSError) as exc:
            self._mark_down(f"broker not answering ({type(exc).__name__})")
            return
        self._slow_checks = 0
        if not self._healthy:
            log.info("kafka: broker answering again")
        self._healthy = True

        short = [t for t, n in self._topics.wanted.items() if counts.get(t, 0) < n]
        if short:
            try:
                async with asyncio.timeout(5):
                    counts.update(await self._topics.ensure(short))
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
            force_metadata_update(consumer)

    def _readers(self) -> list[Reader]:
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
        want = {
            TopicPartition(topic, p)
            for topic in (self._reply_topic, self.names.control)
            for p in range(counts.get(topic, 0))
        }
        await follow_partitions(reader.consumer, want)

    # -- closing --------------------------------------------------------------------

    async def _close_transport(self) -> None:
        self._closing = True
        self._healthy = False
        await stop_task(self._supervisor)  # see Reader.stop
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
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._topics.close(), 5)
