"""Rate-limit windows (``edge.rate_limit``): exact alone, shares with peers, queues with
``max_wait``, and the IETF headers. The bus exchange itself is proven end to end in
``tests/e2e/test_resilience.py`` (three edge processes)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import msgspec
import pytest

from busgate.contracts.config import Limit, Resilience
from busgate.edge.limits_sync import CHUNK, messages
from busgate.edge.rate_limit import FULL_EVERY, RateLimited, Report, Windows, headers
from tests.edge.conftest import make_config


async def admitted(windows: Windows, key: str, limit: Limit, calls: int) -> int:
    n = 0
    for _ in range(calls):
        try:
            await windows.admit(key, limit)
            n += 1
        except RateLimited:
            pass
    return n


async def test_one_edge_alone_is_exact():
    windows = Windows()
    assert await admitted(windows, "user:demo|a", Limit(limit=50, period=3600), 300) == 50
    # another key has its own window
    assert await admitted(windows, "user:demo|b", Limit(limit=50, period=3600), 5) == 5


async def test_refusal_says_when_a_permit_comes():
    windows = Windows()
    limit = Limit(limit=1, period=3600)
    await windows.admit("k", limit)
    with pytest.raises(RateLimited) as refused:
        await windows.admit("k", limit)
    now = time.time()
    expected = (int(now // 3600) + 1) * 3600 - now
    assert refused.value.retry_after is not None
    assert abs(refused.value.retry_after - max(1, -(-expected // 1))) <= 1
    assert refused.value.status == 429


async def test_unlimited_never_refuses():
    windows = Windows()
    assert await admitted(windows, "k", Limit(limit=-1), 1000) == 1000


@contextlib.asynccontextmanager
async def peer(windows: Windows, counts: dict[str, tuple[int, int]]):
    """A peer that reports ``counts`` every few milliseconds, as the exchange would."""

    async def reports() -> None:
        while True:
            windows.report()
            await asyncio.sleep(0.002)
            windows.heard("other", counts)
            await asyncio.sleep(0.003)

    windows.heard("other", counts)
    task = asyncio.create_task(reports())
    try:
        yield
    finally:
        task.cancel()


async def test_peer_counts_are_subtracted_and_forgotten():
    windows = Windows(sync_interval=0.01)
    limit = Limit(limit=10, period=3600)
    window = int(time.time() // 3600)
    async with peer(windows, {"k": (window, 8)}):
        assert await admitted(windows, "k", limit, 10) == 2
    windows.forget("other")
    assert await admitted(windows, "k", limit, 10) == 8


async def test_counts_of_an_old_window_do_not_count():
    windows = Windows(sync_interval=0.01)
    window = int(time.time() // 3600)
    async with peer(windows, {"k": (window - 1, 10)}):
        assert await admitted(windows, "k", Limit(limit=10, period=3600), 20) == 10


async def test_with_peers_an_edge_takes_its_share_per_round():
    """Before its peers have heard of its calls, an edge admits only its share of what is
    left: three edges that each see a burst admit about one limit, not three."""
    edges = {name: Windows(sync_interval=0.02, node=name) for name in "abc"}
    for name, w in edges.items():
        for other in edges:
            if other != name:
                w.heard(other, {})
    limit = Limit(limit=50, period=3600)

    async def sync_forever() -> None:
        while True:
            reports = {name: w.report() for name, w in edges.items()}
            await asyncio.sleep(0.005)  # in flight
            for name, w in edges.items():
                for other, r in reports.items():
                    if other != name:
                        w.heard(other, r.counts, r.seq, r.seen, r.full)
            await asyncio.sleep(0.015)

    sync = asyncio.create_task(sync_forever())
    try:
        counts = await asyncio.gather(
            *(admitted(w, "user:x|u", limit, 100) for w in edges.values())
        )
    finally:
        sync.cancel()
    assert sum(counts) == 50, counts  # the same view everywhere: exact


async def test_max_wait_queues_for_a_permit():
    windows = Windows()
    limit = Limit(limit=20, period=1, max_wait=3.0)
    start = time.monotonic()
    got = await asyncio.gather(*(windows.admit("q", limit) for _ in range(30)))
    assert len(got) == 30  # none refused: the last ones waited for the next window
    assert time.monotonic() - start > 0.2


async def test_max_wait_too_short_is_refused():
    windows = Windows()
    limit = Limit(limit=2, period=3600, max_wait=0.1)
    await windows.admit("q", limit)
    await windows.admit("q", limit)
    with pytest.raises(RateLimited):
        await windows.admit("q", limit)


async def test_headers_name_policy_and_remaining_without_the_caller():
    windows = Windows()
    verdict = await windows.admit("user:demo/reports/*|alice", Limit(limit=5, period=10))
    h = headers([verdict])
    assert h["RateLimit-Policy"] == '"user-demo/reports/*";q=5;w=10'
    assert h["RateLimit"].startswith('"user-demo/reports/*";r=4;t=')
    assert "alice" not in h["RateLimit"] + h["RateLimit-Policy"]


async def test_reports_carry_what_changed_and_all_now_and_then():
    windows = Windows()
    limit = Limit(limit=100, period=3600)
    await windows.admit("a", limit)
    first = windows.report()
    assert first.full and set(first.counts) == {"a"}
    await windows.admit("b", limit)
    second = windows.report()
    assert not second.full and set(second.counts) == {"b"}
    assert windows.report().counts == {}
    for _ in range(FULL_EVERY - 3):
        windows.report()
    again = windows.report()
    assert again.full and set(again.counts) == {"a", "b"}


async def test_a_partial_report_is_merged_a_full_one_replaces():
    windows = Windows(node="me")
    w = int(time.time() // 3600)
    windows.heard("p", {"a": (w, 1), "b": (w, 2)})
    windows.heard("p", {"b": (w, 3)}, full=False)
    assert windows.peers["p"].counts == {"a": (w, 1), "b": (w, 3)}
    windows.heard("p", {"c": (w, 1)}, full=True)
    assert windows.peers["p"].counts == {"c": (w, 1)}


async def test_many_keys_go_out_in_chunks_only_the_first_replacing():
    w = int(time.time() // 3600)
    report = Report({f"ip:x|{n}": (w, 1) for n in range(2500)}, True, 7, {"p": 3})
    sent = messages("me", report)
    assert [len(m.counts) for m in sent] == [CHUNK, CHUNK, 500]
    assert [m.full for m in sent] == [True, False, False]
    assert {m.seq for m in sent} == {7}


async def test_ended_windows_are_forgotten():
    now = [1000.0]
    windows = Windows(clock=lambda: now[0])
    await windows.admit("k", Limit(limit=5, period=10))
    windows.report()
    now[0] += 10
    windows.report()
    assert windows.local == {}
    assert windows.periods == {}


@pytest.mark.parametrize("level", ["code", "none"])
async def test_a_429_is_shaped_by_the_error_level(edge, level):
    """A refusal by a rate limit shows what the channel's ``errors`` level lets through, as
    every other error does, and keeps its ``RateLimit`` and ``Retry-After`` headers."""
    config = make_config()
    demo = msgspec.structs.replace(
        config.channels["demo"],
        errors=level,
        resilience=Resilience(rate=Limit(limit=1, period=60)),
    )
    client, _ = await edge(
        msgspec.structs.replace(config, channels={**config.channels, "demo": demo})
    )
    assert (await client.get("/api/request/demo/echo")).status == 200
    for kind in ("request", "stream"):  # the one permit is gone for both
        refused = await client.get(f"/api/{kind}/demo/echo")
        assert refused.status == 429
        assert "Retry-After" in refused.headers and "RateLimit" in refused.headers
        body = await refused.read()
        if level == "none":
            assert body == b""
        else:
            assert json.loads(body) == {
                "error": {"code": "rate_limited", "requestId": refused.headers["X-Request-Id"]}
            }
