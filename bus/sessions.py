"""Login sessions, shared by every edge node through the bus itself — no extra database.

A session is one login: its subject and claims (to mint new access tokens on refresh), the id
of its current refresh token (rotation; an older one presented again is a reuse, and revokes
the session) and whether it is revoked. Each edge keeps a local copy of every session, updated
by watching the shared store, so the hot path's revocation check is a dict lookup:

- NATS: a JetStream key-value bucket (``PREFIX_sessions``), watched; writes that must not race
  (refresh-token rotation) are compare-and-set on the key's revision.
- Kafka: a compacted topic (``PREFIX.sessions``, one partition) that every edge reads from the
  beginning without a consumer group. The log order is the arbiter of races: a conditional
  write names the revision (offset) it was based on and is applied by every reader, in log
  order, only if that is still the key's revision — so all edges reach the same verdict, and
  the writer learns it by waiting until its own record has been read back.

Both stores expire sessions: the bucket's max age / the topic's retention is the longest
refresh lifetime, and every rotation rewrites the record.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import msgspec

from busgate.bus.tasks import stop_task
from busgate.contracts.errors import BusUnavailable

if TYPE_CHECKING:
    from busgate.bus.base import Bus

log = logging.getLogger("busgate.bus.sessions")


class Session(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One login, as stored on the bus (MessagePack; unknown fields tolerated)."""

    v: int = 1
    id: str
    subject: str
    token: str = ""
    """The ``tokens.NAME`` that issued it."""
    claims: dict[str, Any] = {}
    refresh_id: str = ""
    created: float = 0.0
    expires: float = 0.0
    """Absolute, seconds since the epoch: the end of its refresh lifetime."""
    remember: bool = False
    revoked: bool = False
    prev: int = 0
    """Kafka only: the revision (offset + 1) this write was based on; 0 = unconditional."""


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Session).decode


class SessionStore(abc.ABC):
    """The shared sessions, with a local copy kept current by watching."""

    def __init__(self) -> None:
        self._sessions: dict[str, tuple[Session, int]] = {}
        self._revoked: dict[str, float] = {}
        self._changed = asyncio.Event()
        self.applied = 0
        """Records applied to the local copy (for status and tests)."""

    # -- the local copy (hot path) -------------------------------------------------------

    @property
    def size(self) -> int:
        """Sessions in the local copy (the ``busgate_sessions`` gauge). Not ``__len__``: an
        empty store must stay truthy (``sessions or open_store(...)``)."""
        return len(self._sessions)

    def is_revoked(self, session_id: str) -> bool:
        return session_id in self._revoked

    def cached(self, session_id: str) -> Session | None:
        found = self._sessions.get(session_id)
        return found[0] if found else None

    def _apply(self, session_id: str, session: Session | None, revision: int) -> None:
        if session is None:
            self._sessions.pop(session_id, None)
            self._revoked.pop(session_id, None)
        else:
            self._sessions[session_id] = (session, revision)
            if session.revoked:
                self._revoked[session_id] = session.expires
            else:
                self._revoked.pop(session_id, None)
        self.applied += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def prune(self, now: float | None = None) -> int:
        """Forget sessions past their lifetime (the store expires them too)."""
        now = time.time() if now is None else now
        gone = [sid for sid, (s, _) in self._sessions.items() if s.expires and s.expires < now]
        for sid in gone:
            self._sessions.pop(sid, None)
            self._revoked.pop(sid, None)
        return len(gone)

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Until ``condition()`` holds after some change reached the local copy (callers
        bound the wait with ``asyncio.timeout``)."""
        while not condition():
            await self._changed.wait()

    # -- what a store implements -----------------------------------------------------

    @abc.abstractmethod
    async def start(self) -> None:
        """Load every session into the local copy and keep watching; returns once loaded."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def get(self, session_id: str) -> tuple[Session, int] | None:
        """The latest record and its revision, read from the shared store."""

    @abc.abstractmethod
    async def create(self, session: Session) -> int:
        """Store a new session; returns its revision."""

    @abc.abstractmethod
    async def replace(self, session: Session, revision: int) -> bool:
        """Store ``session`` only if ``revision`` is still its latest; False if it lost."""

    @abc.abstractmethod
    async def _put(self, session: Session) -> None:
        """Store unconditionally."""

    async def revoke(self, session_id: str, subject: str = "", expires: float = 0.0) -> None:
        """Revoke a session, known or not (its access tokens stop working everywhere)."""
        found = await self.get(session_id)
        if found is not None:
            session = msgspec.structs.replace(found[0], revoked=True, prev=0)
        else:
            session = Session(
                id=session_id, subject=subject, expires=expires or time.time() + 86_400
            )
            session = msgspec.structs.replace(session, revoked=True)
        await self._put(session)
        # The writer's own copy knows at once, whatever the watch's latency.
        current = self._sessions.get(session_id)
        self._apply(session_id, session, current[1] if current else 0)


class MemorySessions(SessionStore):
    """One process only: for a single edge without a bus store, and for unit tests."""

    def __init__(self) -> None:
        super().__init__()
        self._revision = 0

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def get(self, session_id: str) -> tuple[Session, int] | None:
        return self._sessions.get(session_id)

    async def create(self, session: Session) -> int:
        self._revision += 1
        self._apply(session.id, session, self._revision)
        return self._revision

    async def replace(self, session: Session, revision: int) -> bool:
        current = self._sessions.get(session.id)
        if current is None or current[1] != revision:
            return False
        await self.create(session)
        return True

    async def _put(self, session: Session) -> None:
        await self.create(session)


class NatsSessions(SessionStore):
    """A JetStream key-value bucket, watched by every edge."""

    def __init__(self, nc: Any, *, prefix: str = "busgate", ttl: float = 30 * 86_400) -> None:
        super().__init__()
        self.nc = nc
        self.bucket = f"{prefix}_sessions".replace(".", "_").replace("-", "_")
        self.ttl = ttl
        self.kv: Any = None
        self._watcher: Any = None
        self._task: asyncio.Task[None] | None = None
        self._guard: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from nats.js.api import KeyValueConfig, StorageType
        from nats.js.errors import BadRequestError

        js = self.nc.jetstream()
        config = KeyValueConfig(
            bucket=self.bucket, history=1, ttl=self.ttl, storage=StorageType.FILE
        )
        try:
            self.kv = await js.create_key_value(config)
        except BadRequestError:  # exists with other settings: use it as it is
            self.kv = await js.key_value(self.bucket)
        await self._rewatch()
        self._guard = asyncio.create_task(self._guard_reconnects())

    async def _rewatch(self) -> None:
        """(Re)start the watch; it first delivers the latest value of every key."""
        await self._stop_watch()
        self._watcher = watcher = await self.kv.watchall()
        loaded = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._watch(watcher, loaded))
        await asyncio.wait_for(asyncio.shield(loaded), 10)

    async def _guard_reconnects(self, every: float = 0.25) -> None:
        """After a reconnect the watch's consumer may be gone (a restarted server) and only
        noticed after missed heartbeats, seconds later: start a new watch at once instead,
        which also brings in what changed during the outage."""
        seen = self.nc.stats["reconnects"]
        while True:
            await asyncio.sleep(every)
            now = self.nc.stats["reconnects"]
            if now == seen or not self.nc.is_connected:
                continue
            try:
                await self._rewatch()
                seen = now
                log.info("sessions: watching again after a reconnect")
            except Exception as exc:  # the server not ready yet: try on the next tick
                log.warning("sessions: watch not restarted yet: %s", type(exc).__name__)

    async def _watch(self, watcher: Any, loaded: asyncio.Future[None]) -> None:
        async for entry in watcher:
            if entry is None:  # the initial values are all in
                if not loaded.done():
                    loaded.set_result(None)
                continue
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                self._apply(entry.key, None, entry.revision or 0)
                continue
            try:
                session = _decode(entry.value)
            except msgspec.DecodeError:
                log.warning("sessions: undecodable record for key %s", entry.key)
                continue
            self._apply(entry.key, session, entry.revision or 0)
        if not loaded.done():
            loaded.set_result(None)

    async def _stop_watch(self) -> None:
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._watcher.stop(), 2)
        await stop_task(self._task)
        self._watcher = self._task = None

    async def close(self) -> None:
        await stop_task(self._guard)
        await self._stop_watch()

    def _check(self) -> None:
        if not self.nc.is_connected:
            raise BusUnavailable("the NATS connection is down; try again shortly")

    @contextlib.contextmanager
    def _unavailable(self) -> Iterator[None]:
        """NATS failures (JetStream not answering, a restarting server) as a 503."""
        import nats.errors
        from nats.js.errors import KeyValueError

        try:
            yield
        except KeyValueError:  # not found, deleted, wrong revision: the caller's business
            raise
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusUnavailable(
                f"the session store did not answer: {type(exc).__name__}"
            ) from None

    async def get(self, session_id: str) -> tuple[Session, int] | None:
        from nats.js.errors import KeyDeletedError, KeyNotFoundError

        self._check()
        try:
            with self._unavailable():
                entry = await self.kv.get(session_id)
        except (KeyNotFoundError, KeyDeletedError):
            return None
        if not entry.value:
            return None
        return _decode(entry.value), int(entry.revision or 0)

    async def create(self, session: Session) -> int:
        self._check()
        with self._unavailable():
            revision = int(await self.kv.create(session.id, _encode(session)))
        self._apply(session.id, session, revision)
        return revision

    async def replace(self, session: Session, revision: int) -> bool:
        from nats.js.errors import KeyWrongLastSequenceError

        self._check()
        try:
            with self._unavailable():
                new = int(await self.kv.update(session.id, _encode(session), last=revision))
        except KeyWrongLastSequenceError:
            return False
        self._apply(session.id, session, new)
        return True

    async def _put(self, session: Session) -> None:
        self._check()
        with self._unavailable():
            await self.kv.put(session.id, _encode(session))


class KafkaSessions(SessionStore):
    """A compacted topic with one partition, read from the beginning by every edge."""

    def __init__(
        self,
        servers: str,
        *,
        prefix: str = "busgate",
        ttl: float = 30 * 86_400,
        replication: int | None = None,
    ) -> None:
        """``replication`` of the topic, if it is created here: by default the number of
        brokers, at most 3 (as for the bus's own topics), so sessions outlive a broker."""
        super().__init__()
        self.servers = servers
        self.replication = replication
        self.topic = f"{prefix}.sessions"
        self.ttl = ttl
        self._producer: Any = None
        self._consumer: Any = None
        self._task: asyncio.Task[None] | None = None
        self._position = 0
        self._waiters: dict[int, asyncio.Future[None]] = {}

    async def _ensure_topic(self) -> None:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        from aiokafka.errors import TopicAlreadyExistsError

        from busgate.bus.kafka.transport import default_replication

        admin = AIOKafkaAdminClient(bootstrap_servers=self.servers)
        await admin.start()
        try:
            topic = NewTopic(
                self.topic,
                num_partitions=1,
                replication_factor=self.replication or await default_replication(admin),
                topic_configs={
                    "cleanup.policy": "compact,delete",
                    "retention.ms": str(int(self.ttl * 1000)),
                },
            )
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([topic])
        finally:
            await admin.close()

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

        await self._ensure_topic()
        self._producer = AIOKafkaProducer(bootstrap_servers=self.servers, acks="all", linger_ms=0)
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.servers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=50,
        )
        await self._consumer.start()
        partition = TopicPartition(self.topic, 0)
        self._consumer.assign([partition])
        await self._consumer.seek_to_beginning(partition)
        end = (await self._consumer.end_offsets([partition]))[partition]
        loaded = asyncio.get_running_loop().create_future()
        if end == 0:
            loaded.set_result(None)
        else:
            self._waiters[end - 1] = loaded
        self._task = asyncio.create_task(self._read(partition))
        await asyncio.wait_for(asyncio.shield(loaded), 30)

    async def _read(self, partition: Any) -> None:
        while True:
            try:
                batches = await self._consumer.getmany(partition, timeout_ms=500)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker restarting; aiokafka reconnects
                log.warning("sessions: read failed: %s", type(exc).__name__)
                await asyncio.sleep(0.5)
                continue
            for record in batches.get(partition, []):
                self._on_record(record.key, record.value, record.offset)

    def _on_record(self, key: bytes | None, value: bytes | None, offset: int) -> None:
        self._position = offset + 1
        revision = offset + 1  # 0 stays free to mean "unconditional"
        if key is not None:
            session_id = key.decode()
            if value is None:
                self._apply(session_id, None, revision)
            else:
                try:
                    session = _decode(value)
                except msgspec.DecodeError:
                    log.warning("sessions: undecodable record at offset %d", offset)
                    session = None
                if session is not None:
                    current = self._sessions.get(session_id)
                    # A conditional write applies only if it was based on the latest.
                    if session.prev == 0 or (current is not None and current[1] == session.prev):
                        self._apply(session_id, session, revision)
        for waited in [o for o in self._waiters if o < self._position]:
            fut = self._waiters.pop(waited)
            if not fut.done():
                fut.set_result(None)

    async def _write(self, session_id: str, data: bytes) -> int:
        from aiokafka.errors import KafkaError

        try:
            meta = await self._producer.send_and_wait(
                self.topic, key=session_id.encode(), value=data, partition=0
            )
        except KafkaError as exc:
            raise BusUnavailable(f"Kafka did not take the session: {type(exc).__name__}") from None
        offset = int(meta.offset)
        if offset >= self._position:
            fut = self._waiters.setdefault(offset, asyncio.get_running_loop().create_future())
            try:
                await asyncio.wait_for(asyncio.shield(fut), 10)
            except TimeoutError:
                raise BusUnavailable("the session was written but not read back in time") from None
        return offset + 1

    async def close(self) -> None:
        await stop_task(self._task)
        for client in (self._consumer, self._producer):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.stop()

    async def get(self, session_id: str) -> tuple[Session, int] | None:
        return self._sessions.get(session_id)

    async def create(self, session: Session) -> int:
        return await self._write(session.id, _encode(session))

    async def replace(self, session: Session, revision: int) -> bool:
        based = msgspec.structs.replace(session, prev=revision)
        revision = await self._write(session.id, _encode(based))
        current = self._sessions.get(session.id)
        return current is not None and current[1] == revision

    async def _put(self, session: Session) -> None:
        await self._write(session.id, _encode(msgspec.structs.replace(session, prev=0)))


def open_store(bus: Bus | None, url: str, *, prefix: str, ttl: float) -> SessionStore:
    """The session store that goes with ``bus``: its NATS connection, or the Kafka cluster
    of ``url``; a bus of neither kind (tests) gets a process-local store."""
    from busgate.bus.nats import NatsBus

    if isinstance(bus, NatsBus):
        return NatsSessions(bus.nc, prefix=prefix, ttl=ttl)
    from busgate.bus import parse_url

    scheme, servers, options = parse_url(url)
    if scheme == "kafka" and bus is not None:
        replication = options.get("replication_factor")
        return KafkaSessions(",".join(servers), prefix=prefix, ttl=ttl, replication=replication)
    return MemorySessions()
