"""The shared session store, written once and run on each transport (real brokers): what
one edge node writes, every other node's local copy sees, and races are settled alike."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import nats
import pytest

from busgate.brokers import NatsServer, TansuBroker
from busgate.bus.sessions import KafkaSessions, MemorySessions, NatsSessions, Session, SessionStore
from busgate.contracts.errors import BusUnavailable

Opener = Callable[[], Awaitable[SessionStore]]


@pytest.fixture(scope="module")
def nats_server():
    with NatsServer() as server:
        yield server


@pytest.fixture(scope="module")
def tansu():
    with TansuBroker() as broker:
        yield broker


@pytest.fixture(params=["nats", "kafka"])
async def open_store(request) -> AsyncIterator[Opener]:
    """Opens stores on one shared backend, as separate edge nodes would (own connections);
    each test gets its own namespace."""
    request.applymarker(getattr(pytest.mark, request.param))
    prefix = f"t{secrets.token_hex(4)}"
    stores: list[SessionStore] = []
    connections = []

    async def opener() -> SessionStore:
        if request.param == "nats":
            server = request.getfixturevalue("nats_server")
            nc = await nats.connect(server.url)
            connections.append(nc)
            store: SessionStore = NatsSessions(nc, prefix=prefix, ttl=3600)
        else:
            broker = request.getfixturevalue("tansu")
            store = KafkaSessions(f"{broker.host}:{broker.port}", prefix=prefix, ttl=3600)
        await store.start()
        stores.append(store)
        return store

    yield opener
    for store in stores:
        await store.close()
    for nc in connections:
        await nc.close()


def session(**over) -> Session:
    now = time.time()
    base = {
        "id": secrets.token_urlsafe(16),
        "subject": "demo",
        "token": "main",
        "claims": {"roles": ["user"]},
        "refresh_id": "r1",
        "created": now,
        "expires": now + 3600,
    }
    return Session(**{**base, **over})


async def eventually(store: SessionStore, condition: Callable[[], bool], within: float = 5.0):
    async with asyncio.timeout(within):
        await store.wait_until(condition)


async def test_a_new_session_reaches_every_node(open_store):
    a, b = await open_store(), await open_store()
    s = session()
    revision = await a.create(s)
    assert revision > 0
    await eventually(b, lambda: b.cached(s.id) is not None)
    assert b.cached(s.id) == s
    found = await b.get(s.id)
    assert found is not None and found[0] == s and found[1] == revision


async def test_revocation_reaches_another_node_within_a_second(open_store):
    a, b = await open_store(), await open_store()
    s = session()
    await a.create(s)
    await eventually(b, lambda: b.cached(s.id) is not None)
    assert not b.is_revoked(s.id)
    started = time.perf_counter()
    await a.revoke(s.id)
    assert a.is_revoked(s.id)  # the writer knows at once
    await eventually(b, lambda: b.is_revoked(s.id), within=1.0)
    elapsed = time.perf_counter() - started
    print(f"revocation propagated in {elapsed * 1000:.1f} ms")
    assert elapsed < 1.0


async def test_revoking_an_unknown_session_still_revokes_it(open_store):
    a, b = await open_store(), await open_store()
    await a.revoke("never-seen", subject="x", expires=time.time() + 60)
    await eventually(b, lambda: b.is_revoked("never-seen"))


async def test_compare_and_set_lets_exactly_one_racer_win(open_store):
    a, b = await open_store(), await open_store()
    s = session()
    revision = await a.create(s)
    await eventually(b, lambda: b.cached(s.id) is not None)
    won = await asyncio.gather(
        a.replace(session(id=s.id, refresh_id="from-a"), revision),
        b.replace(session(id=s.id, refresh_id="from-b"), revision),
    )
    assert sorted(won) == [False, True]
    winner = "from-a" if won[0] else "from-b"
    for store in (a, b):
        await eventually(store, lambda st=store: st.cached(s.id).refresh_id == winner)
    # A stale revision loses too.
    assert not await a.replace(session(id=s.id, refresh_id="late"), revision)


async def test_a_node_started_later_loads_everything(open_store):
    a = await open_store()
    live, revoked = session(), session()
    await a.create(live)
    await a.create(revoked)
    await a.revoke(revoked.id)
    late = await open_store()  # start() returns once caught up: no waiting needed
    assert late.cached(live.id) == live
    assert late.is_revoked(revoked.id) and not late.is_revoked(live.id)


async def test_memory_store_compare_and_set():
    store = MemorySessions()
    s = session()
    revision = await store.create(s)
    assert await store.replace(session(id=s.id, refresh_id="r2"), revision)
    assert not await store.replace(session(id=s.id, refresh_id="r3"), revision)
    await store.revoke(s.id)
    assert store.is_revoked(s.id)
    assert store.prune(now=time.time() + 7200) == 1
    assert not store.is_revoked(s.id)


@pytest.mark.nats
async def test_the_watch_survives_a_nats_restart():
    """A restarted server loses the watch's consumer; the store watches again at once after
    the reconnect (not after missed heartbeats) and keeps propagating."""
    with NatsServer() as server:
        options = {"max_reconnect_attempts": -1, "reconnect_time_wait": 0.1}
        na, nb = (
            await nats.connect(server.url, **options),
            await nats.connect(server.url, **options),
        )
        a, b = NatsSessions(na, prefix="r", ttl=3600), NatsSessions(nb, prefix="r", ttl=3600)
        await a.start()
        await b.start()
        try:
            s = session()
            await a.create(s)
            await eventually(b, lambda: b.cached(s.id) is not None)
            server.stop()
            server.start()
            async with asyncio.timeout(15):
                while True:  # JetStream takes a moment after a restart: 503 until then
                    try:
                        await a.revoke(s.id)
                        break
                    except BusUnavailable:
                        await asyncio.sleep(0.1)
            await eventually(b, lambda: b.is_revoked(s.id), within=2.0)
        finally:
            await a.close()
            await b.close()
            await na.close()
            await nb.close()


def test_a_kafka_bus_url_with_options_gives_the_store_its_servers_and_replication():
    from busgate.bus.sessions import open_store as store_for
    from tests.edge.memory_bus import MemoryBus

    url = "kafka://k1:9092,kafka://k2:9092?partitions=12&replication=3"
    store = store_for(MemoryBus(), url, prefix="p", ttl=60)
    assert isinstance(store, KafkaSessions)
    assert (store.servers, store.replication, store.topic) == ("k1:9092,k2:9092", 3, "p.sessions")
