"""The shared store's contract, written once and run on process memory and on both real
buses: what one node writes every other node's view sees, races have one winner, expiry and
deletes read alike everywhere, and a broker restart keeps what is promised."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import nats
import pytest

from busgate.brokers import Broker, NatsServer, TansuBroker
from busgate.bus.store import Change, MemoryBackend, Store, open_store
from busgate.bus.store.kafka import KafkaStore
from busgate.bus.store.memory import MemoryStore
from busgate.bus.store.nats import NatsStore
from busgate.contracts.errors import BusUnavailable


class Thing(msgspec.Struct, frozen=True):
    name: str
    n: int = 0


Opener = Callable[..., Awaitable[Store[Any]]]

STORES = [
    pytest.param("memory", id="memory"),
    pytest.param("nats", marks=pytest.mark.nats, id="nats"),
    pytest.param("kafka", marks=pytest.mark.kafka, id="kafka"),
]


async def _connect(url: str) -> Any:
    return await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)


class Nodes:
    """Opens stores as separate nodes would (own connections) on one backend."""

    def __init__(self, transport: str, broker: Broker | None) -> None:
        self.transport = transport
        self.broker = broker
        self.prefix = f"t{secrets.token_hex(4)}"
        self.memory = MemoryBackend()
        self.stores: list[Store[Any]] = []
        self.connections: list[Any] = []

    async def open(self, value_type: type[Any] = Thing, kind: str = "things") -> Store[Any]:
        store: Store[Any]
        if self.transport == "memory":
            store = MemoryStore(kind, value_type, backend=self.memory)
        elif self.transport == "nats":
            assert self.broker is not None
            nc = await _connect(self.broker.url)
            self.connections.append(nc)
            store = NatsStore(nc, kind, value_type, prefix=self.prefix, max_age=3600)
        else:
            assert self.broker is not None
            servers = f"{self.broker.host}:{self.broker.port}"
            store = KafkaStore(servers, kind, value_type, prefix=self.prefix, max_age=3600)
        await store.start()
        self.stores.append(store)
        return store

    async def close(self) -> None:
        for store in self.stores:
            await store.close()
        for nc in self.connections:
            await nc.close()


@pytest.fixture(params=STORES)
async def nodes(request: pytest.FixtureRequest) -> AsyncIterator[Nodes]:
    broker: Broker | None = None
    if request.param == "nats":
        broker = request.getfixturevalue("nats_server")
    elif request.param == "kafka":
        broker = request.getfixturevalue("tansu_broker")
    opened = Nodes(request.param, broker)
    try:
        yield opened
    finally:
        await opened.close()


async def until(store: Store[Any], condition: Callable[[], bool], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        await store.wait_until(condition)


async def test_a_write_reaches_another_node(nodes: Nodes) -> None:
    a, b = await nodes.open(), await nodes.open()
    started = time.perf_counter()
    revision = await a.put("thing.1", Thing("one", 1))
    assert revision > 0
    assert a.value("thing.1") == Thing("one", 1)  # the writer's view at once
    await until(b, lambda: b.local("thing.1") is not None, within=1.0)
    elapsed = time.perf_counter() - started
    print(f"\n{nodes.transport}: a put reached another node in {elapsed * 1000:.1f} ms")
    entry = b.local("thing.1")
    assert entry is not None and (entry.value, entry.revision) == (Thing("one", 1), revision)
    found = await b.get("thing.1")
    assert found is not None and found.value == Thing("one", 1) and found.revision == revision
    assert await b.get("thing.none") is None and b.local("thing.none") is None
    later = await b.put("thing.1", Thing("one", 2))
    assert later > revision  # revisions only grow
    await until(a, lambda: a.value("thing.1") == Thing("one", 2))


async def test_bytes_values(nodes: Nodes) -> None:
    a, b = await nodes.open(bytes, kind="blobs"), await nodes.open(bytes, kind="blobs")
    await a.put("k", b"\x00\xffraw")
    await until(b, lambda: b.value("k") == b"\x00\xffraw")


async def test_create_has_exactly_one_winner(nodes: Nodes) -> None:
    a, b = await nodes.open(), await nodes.open()
    won = await asyncio.gather(a.create("idem.x", Thing("a")), b.create("idem.x", Thing("b")))
    assert sorted(w is None for w in won) == [False, True]
    winner = Thing("a") if won[0] is not None else Thing("b")
    for store in (a, b):
        await until(store, lambda s=store: s.value("idem.x") == winner)
    assert await a.create("idem.x", Thing("again")) is None


async def test_compare_and_set_has_exactly_one_winner(nodes: Nodes) -> None:
    a, b = await nodes.open(), await nodes.open()
    revision = await a.put("cas", Thing("base"))
    await until(b, lambda: b.local("cas") is not None)
    won = await asyncio.gather(
        a.compare_and_set("cas", Thing("from-a"), revision),
        b.compare_and_set("cas", Thing("from-b"), revision),
    )
    assert sorted(w is None for w in won) == [False, True]
    winner = Thing("from-a") if won[0] is not None else Thing("from-b")
    for store in (a, b):
        await until(store, lambda s=store: s.value("cas") == winner)
    assert await a.compare_and_set("cas", Thing("stale"), revision) is None
    current = await b.get("cas")
    assert current is not None
    assert await b.compare_and_set("cas", Thing("fresh"), current.revision) is not None


async def test_delete_reaches_watchers_and_a_stale_conditional_delete_loses(nodes: Nodes) -> None:
    a, b = await nodes.open(), await nodes.open()
    first = await a.put("gone", Thing("x"))
    await until(b, lambda: b.local("gone") is not None)
    seen: list[Change[Any]] = []
    unwatch = b.watch(seen.append)
    await a.put("gone", Thing("y"))
    assert not await a.delete("gone", revision=first)  # based on an older revision
    await until(b, lambda: b.value("gone") == Thing("y"))
    assert await a.delete("gone")
    assert a.local("gone") is None
    await until(b, lambda: b.local("gone") is None)
    assert await b.get("gone") is None
    unwatch()
    values = [c.entry.value if c.entry else None for c in seen if c.key == "gone"]
    assert values == [Thing("y"), None]
    # A conditional delete on the latest revision wins; the key can be created again.
    revision = await a.create("gone", Thing("z"))
    assert revision is not None
    assert await a.delete("gone", revision=revision)
    # b creates from its own view (Kafka: its copy of the log), once the delete reached it.
    await until(b, lambda: b.local("gone") is None)
    assert await b.create("gone", Thing("again")) is not None


async def test_changes_as_an_async_iterator(nodes: Nodes) -> None:
    a, b = await nodes.open(), await nodes.open()
    changes = b.changes()
    pending = asyncio.ensure_future(anext(changes))
    await asyncio.sleep(0)  # the iterator registers its watch on its first step
    await a.put("it", Thing("v"))
    async with asyncio.timeout(5):
        change = await pending
    assert change.key == "it" and change.entry is not None and change.entry.value == Thing("v")
    await changes.aclose()


async def test_an_expired_entry_is_absent_everywhere(nodes: Nodes) -> None:
    a, b = await nodes.open(), await nodes.open()
    past = time.time() - 1
    await a.put("short", Thing("old"), expires=past)
    await a.put("long", Thing("stays"), ttl=3600)
    await until(b, lambda: b.local("long") is not None)
    assert "short" in b.view  # known, but expired:
    assert b.local("short") is None and b.value("short") is None
    assert await b.get("short") is None
    assert [e.key for e in b.items()] == ["long"]
    entry = b.local("long")
    assert entry is not None and entry.expires > time.time() + 3500
    # create takes an expired key, on any node, exactly once
    won = await asyncio.gather(b.create("short", Thing("b")), a.create("short", Thing("a")))
    assert sorted(w is None for w in won) == [False, True]
    # prune forgets what expired longer ago than the margin, and tells the watchers
    await a.put("ancient", Thing("x"), expires=time.time() - 1000)
    await until(b, lambda: "ancient" in b.view)
    told: list[Change[Any]] = []
    b.watch(told.append)
    assert b.prune() == 1
    assert "ancient" not in b.view and [(c.key, c.entry) for c in told] == [("ancient", None)]


async def test_a_node_started_later_loads_everything(nodes: Nodes) -> None:
    a = await nodes.open()
    for i in range(20):
        await a.put(f"k.{i}", Thing("v", i))
    await a.delete("k.3")
    late = await nodes.open()  # start() returns once caught up: no waiting needed
    assert sorted(e.value.n for e in late.items("k.")) == [i for i in range(20) if i != 3]


async def test_open_store_follows_the_bus() -> None:
    from busgate.bus.kafka import KafkaBus
    from busgate.bus.nats import NatsBus
    from tests.edge.memory_bus import MemoryBus

    nats_store = open_store(NatsBus(["nats://x:1"], node="n", prefix="p"), "sessions", Thing)
    assert isinstance(nats_store, NatsStore) and nats_store.bucket == "p_sessions"
    kafka_bus = KafkaBus("k1:9092,k2:9092", node="n", prefix="p", replication_factor=3)
    kafka_store = open_store(kafka_bus, "sessions", Thing, max_age=60)
    assert isinstance(kafka_store, KafkaStore)
    assert (kafka_store.servers, kafka_store.replication, kafka_store.topic) == (
        "k1:9092,k2:9092",
        3,
        "p.sessions",
    )
    assert isinstance(open_store(MemoryBus(), "sessions", Thing), MemoryStore)


@pytest.mark.nats
async def test_nats_store_without_a_view_reads_on_demand(nats_server: NatsServer) -> None:
    """``view=False``: no watch on the bucket (the fleet's writes do not land on this node)
    and nothing kept locally; get, create and compare-and-set still go to the bucket."""
    prefix = f"t{secrets.token_hex(4)}"
    nc_w, nc_r = await _connect(nats_server.url), await _connect(nats_server.url)
    writer = NatsStore(nc_w, "things", Thing, prefix=prefix, max_age=3600)
    reader = NatsStore(nc_r, "things", Thing, prefix=prefix, max_age=3600, view=False)
    try:
        await writer.start()
        await writer.put("thing.0", Thing("before"))
        await reader.start()
        revision = await writer.put("thing.1", Thing("one", 1))
        found = await reader.get("thing.1")
        assert found is not None and (found.value, found.revision) == (Thing("one", 1), revision)
        assert (await reader.get("thing.0")) is not None
        assert await reader.create("thing.1", Thing("taken")) is None
        assert await reader.compare_and_set("thing.1", Thing("two"), revision) is not None
        await until(writer, lambda: writer.value("thing.1") == Thing("two"))
        assert dict(reader.view) == {} and reader.applied == 0
        info = await nc_r.jetstream().stream_info(f"KV_{reader.bucket}")
        assert info.state.consumer_count == 1, "only the writer watches"
    finally:
        await reader.close()
        await writer.close()
        await nc_w.close()
        await nc_r.close()


async def _write_retrying(store: Store[Any], key: str, value: Any, within: float = 30) -> int:
    """The broker takes a moment after a restart (JetStream, topic metadata): 503 until
    then, which is what a caller sees too."""
    async with asyncio.timeout(within):
        while True:
            try:
                return await store.put(key, value)
            except BusUnavailable:
                await asyncio.sleep(0.1)


@pytest.mark.nats
async def test_nats_restart_keeps_entries_and_watching() -> None:
    """JetStream keeps the bucket on disk: entries survive, each node watches again right
    after its reconnect and catches up on what changed meanwhile."""
    with NatsServer() as server:
        nodes = Nodes("nats", server)
        try:
            a, b = await nodes.open(), await nodes.open()
            await a.put("before", Thing("kept"))
            await until(b, lambda: b.local("before") is not None)
            server.stop()
            with pytest.raises(BusUnavailable):
                await a.put("during", Thing("x"))
            server.start()
            started = time.monotonic()
            await _write_retrying(a, "after", Thing("new"))
            await until(b, lambda: b.value("after") == Thing("new"), within=5)
            print(
                f"\nnats: a write reached another node {time.monotonic() - started:.2f} s"
                " after the restart"
            )
            late = await nodes.open()
            assert late.value("before") == Thing("kept") and late.value("after") == Thing("new")
        finally:
            await nodes.close()


@pytest.mark.kafka
async def test_kafka_broker_that_lost_its_log_gets_the_views_back() -> None:
    """Tansu keeps its log in memory: a restart loses it. What is promised: the running
    nodes notice, read the new log, write their live entries back (so a node started after
    the restart loads them), and new writes propagate again."""
    with TansuBroker() as broker:
        nodes = Nodes("kafka", broker)
        try:
            a, b = await nodes.open(), await nodes.open()
            await a.put("before", Thing("kept"))
            await until(b, lambda: b.local("before") is not None)
            broker.stop()
            broker.start()
            await _write_retrying(a, "after", Thing("new"), within=60)
            await until(b, lambda: b.value("after") == Thing("new"), within=10)
            assert b.value("before") == Thing("kept")
            assert isinstance(a, KafkaStore) and a.log_losses >= 1
            late = await nodes.open()
            assert late.value("before") == Thing("kept") and late.value("after") == Thing("new")
        finally:
            await nodes.close()
