"""Sessions on the shared store, on process memory and on each real bus: what one edge node
writes every other node's view sees, races are settled alike, and deleting an account ends
every session of its subject on every node. (The store's own contract, restarts included,
is tests/bus/test_store.py.)"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import pytest

from busgate.bus.sessions import Session, Sessions, SubjectEnd
from busgate.bus.store import MemoryBackend
from busgate.bus.store.kafka import KafkaStore
from busgate.bus.store.memory import MemoryStore
from busgate.bus.store.nats import NatsStore

Opener = Callable[[], Awaitable[Sessions]]

TRANSPORTS = [
    pytest.param("memory", id="memory"),
    pytest.param("nats", marks=pytest.mark.nats, id="nats"),
    pytest.param("kafka", marks=pytest.mark.kafka, id="kafka"),
]


@pytest.fixture(params=TRANSPORTS)
async def open_sessions(request: pytest.FixtureRequest) -> AsyncIterator[Opener]:
    """Opens the sessions of separate edge nodes (own connections) on one backend; each
    test gets its own namespace."""
    prefix = f"t{secrets.token_hex(4)}"
    backend = MemoryBackend()
    opened: list[Sessions] = []
    connections: list[Any] = []

    async def opener() -> Sessions:
        max_age = 3600.0
        if request.param == "memory":
            sessions = Sessions(
                MemoryStore("sessions", Session, backend=backend),
                MemoryStore("subjects", SubjectEnd, backend=backend),
                max_age,
            )
        elif request.param == "nats":
            server = request.getfixturevalue("nats_server")
            nc = await nats.connect(server.url)
            connections.append(nc)
            sessions = Sessions(
                NatsStore(nc, "sessions", Session, prefix=prefix, max_age=max_age),
                NatsStore(nc, "subjects", SubjectEnd, prefix=prefix, max_age=max_age),
                max_age,
            )
        else:
            broker = request.getfixturevalue("tansu_broker")
            servers = f"{broker.host}:{broker.port}"
            sessions = Sessions(
                KafkaStore(servers, "sessions", Session, prefix=prefix, max_age=max_age),
                KafkaStore(servers, "subjects", SubjectEnd, prefix=prefix, max_age=max_age),
                max_age,
            )
        await sessions.start()
        opened.append(sessions)
        return sessions

    yield opener
    for sessions in opened:
        await sessions.close()
    for nc in connections:
        await nc.close()


def session(**over: Any) -> Session:
    now = time.time()
    base: dict[str, Any] = {
        "id": secrets.token_urlsafe(16),
        "subject": "demo",
        "token": "main",
        "claims": {"roles": ["user"]},
        "refresh_id": "r1",
        "created": now,
        "expires": now + 3600,
    }
    return Session(**{**base, **over})


async def eventually(sessions: Sessions, condition: Callable[[], bool], within: float = 5.0):
    async with asyncio.timeout(within):
        await sessions.wait_until(condition)


async def test_a_new_session_reaches_every_node(open_sessions: Opener) -> None:
    a, b = await open_sessions(), await open_sessions()
    s = session()
    revision = await a.create(s)
    assert revision > 0
    await eventually(b, lambda: b.cached(s.id) is not None)
    assert b.cached(s.id) == s
    assert await b.get(s.id) == (s, revision)


async def test_revocation_reaches_another_node_within_a_second(open_sessions: Opener) -> None:
    a, b = await open_sessions(), await open_sessions()
    s = session()
    await a.create(s)
    await eventually(b, lambda: b.cached(s.id) is not None)
    assert not b.is_revoked(s.id)
    started = time.perf_counter()
    await a.revoke(s.id)
    assert a.is_revoked(s.id)  # the writer knows at once
    await eventually(b, lambda: b.is_revoked(s.id), within=1.0)
    print(f"\nrevocation propagated in {(time.perf_counter() - started) * 1000:.1f} ms")


async def test_revoking_an_unknown_session_still_revokes_it(open_sessions: Opener) -> None:
    a, b = await open_sessions(), await open_sessions()
    await a.revoke("never-seen", subject="x", expires=time.time() + 60)
    await eventually(b, lambda: b.is_revoked("never-seen"))


async def test_compare_and_set_lets_exactly_one_racer_win(open_sessions: Opener) -> None:
    a, b = await open_sessions(), await open_sessions()
    s = session()
    revision = await a.create(s)
    await eventually(b, lambda: b.cached(s.id) is not None)
    won = await asyncio.gather(
        a.replace(session(id=s.id, refresh_id="from-a"), revision),
        b.replace(session(id=s.id, refresh_id="from-b"), revision),
    )
    assert sorted(won) == [False, True]
    winner = "from-a" if won[0] else "from-b"
    for node in (a, b):
        await eventually(node, lambda n=node: n.cached(s.id).refresh_id == winner)
    assert not await a.replace(session(id=s.id, refresh_id="late"), revision)


async def test_revoking_a_subject_ends_all_its_sessions_on_every_node(
    open_sessions: Opener,
) -> None:
    """Account deletion: the subject's sessions on any node end everywhere, also one that
    the deleting node had not heard of yet; other subjects' sessions and later logins of a
    subject of the same name are untouched."""
    a, b = await open_sessions(), await open_sessions()
    one, two, other = session(subject="neo"), session(subject="neo"), session(subject="trin")
    await a.create(one)
    await b.create(two)
    await a.create(other)
    await eventually(a, lambda: a.cached(two.id) is not None)
    await eventually(b, lambda: b.cached(one.id) is not None)
    assert len(a.of_subject("neo")) == 2
    # A session b created before the deletion but a has not seen when it deletes:
    unseen = session(subject="neo", created=time.time() - 1)
    assert await a.revoke_subject("neo") == 2
    await b.create(unseen)
    for node in (a, b):
        await eventually(
            node,
            lambda n=node: all(n.is_revoked(s.id, "neo") for s in (one, two, unseen)),
        )
        assert not node.is_revoked(other.id, "trin")
    later = session(subject="neo", created=time.time() + 0.01)  # a new login afterwards
    await b.create(later)
    await eventually(a, lambda: a.cached(later.id) is not None)
    assert not a.is_revoked(later.id, "neo") and not b.is_revoked(later.id, "neo")
    # The refresh path reads the record: the known ones are revoked there too.
    found = await b.get(one.id)
    assert found is not None and found[0].revoked


async def test_a_node_started_later_loads_everything(open_sessions: Opener) -> None:
    a = await open_sessions()
    live, revoked = session(), session()
    await a.create(live)
    await a.create(revoked)
    await a.revoke(revoked.id)
    await a.revoke_subject("gone")
    late = await open_sessions()  # start() returns once caught up: no waiting needed
    assert late.cached(live.id) == live
    assert late.is_revoked(revoked.id) and not late.is_revoked(live.id)
    assert "gone" in late._ended


async def test_prune_forgets_ended_sessions() -> None:
    sessions = Sessions.in_memory()
    await sessions.start()
    s = session(expires=time.time() - 1000)
    await sessions.create(s)
    await sessions.revoke_subject("demo")
    assert sessions.cached(s.id) is None  # expired: absent already
    assert sessions.prune(now=time.time() + 2 * 86_400 * 31) == 2
    assert sessions.of_subject("demo") == [] and not sessions._ended
