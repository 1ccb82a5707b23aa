"""Limits on open streams, per edge node and per client, and stopping them all."""

from __future__ import annotations

import asyncio

import pytest

from busgate.contracts.errors import RateLimited
from busgate.contracts.wire import Identity, Origin, Request
from busgate.edge.open_streams import RETRY_AFTER, OpenStreams, client_key


async def test_the_node_limit_counts_every_client():
    streams = OpenStreams(max_streams=2, max_per_client=10)
    streams.open("ip:a")
    streams.open("ip:b")
    with pytest.raises(RateLimited) as refused:
        streams.open("ip:c")
    assert refused.value.status == 429
    assert refused.value.retry_after == RETRY_AFTER
    assert (len(streams), streams.refused) == (2, 1)


async def test_the_client_limit_counts_one_client():
    streams = OpenStreams(max_streams=10, max_per_client=2)
    streams.open("ip:a")
    streams.open("ip:a")
    with pytest.raises(RateLimited, match="client"):
        streams.open("ip:a")
    streams.open("ip:b")
    assert (streams.of("ip:a"), streams.of("ip:b")) == (2, 1)


async def test_closing_gives_the_slot_back_once():
    streams = OpenStreams(max_streams=1, max_per_client=1)
    slot = streams.open("ip:a")
    slot.close()
    slot.close()
    assert (len(streams), streams.of("ip:a")) == (0, 0)
    streams.open("ip:a")
    with pytest.raises(RateLimited):
        streams.open("ip:b")


async def test_zero_means_no_limit():
    streams = OpenStreams(max_streams=0, max_per_client=0)
    for _ in range(50):
        streams.open("ip:a")
    assert streams.of("ip:a") == 50


async def test_stop_all_marks_every_open_slot_and_cancels_only_waiting_ones():
    streams = OpenStreams(max_streams=10, max_per_client=10)
    waiting, busy, gone = streams.open("ip:a"), streams.open("ip:b"), streams.open("ip:c")
    tasks = [asyncio.ensure_future(asyncio.Event().wait()) for _ in range(2)]
    waiting.task, busy.task = tasks
    waiting.waiting = True
    gone.close()
    assert streams.stop_all() == 2
    assert (waiting.reason, busy.reason, gone.reason) == ("shutdown", "shutdown", None)
    with pytest.raises(asyncio.CancelledError):
        await tasks[0]
    assert not tasks[1].done()  # it ends after its current write, seeing the reason
    assert streams.stop_all() == 0
    tasks[1].cancel()


async def test_a_stop_reason_is_kept_once_set():
    slot = OpenStreams(0, 0).open("ip:a")
    slot.stop("duration")
    slot.stop("shutdown")
    assert slot.reason == "duration"


def test_the_client_is_the_subject_when_authenticated_else_the_ip():
    origin = Origin(client_ip="10.0.0.7")
    anonymous = Request(id="r", origin=origin)
    signed_in = Request(id="r", origin=origin, identity=Identity(subject="ada"))
    assert client_key(anonymous) == "ip:10.0.0.7"
    assert client_key(signed_in) == "subject:ada"
