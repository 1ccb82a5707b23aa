"""Flow control of streams (``bus.flow``) and the edge's bound on a stream's queue."""

from __future__ import annotations

import asyncio

from busgate.bus.correlation import Pending
from busgate.bus.flow import Credits, Window
from busgate.contracts.errors import BusUnavailable, UpstreamError
from busgate.contracts.wire import StreamStep


def test_a_window_opens_with_the_first_step_then_grants_in_half_window_batches():
    window = Window(8)
    assert window.granted == 2  # sizes unknown yet
    grants = [window.handed_on(seq, 10) for seq in range(1, 10)]
    # Then the limit moves by half a window at a time: one Credit every four steps.
    assert grants == [9, None, None, None, 13, None, None, None, 17]


def test_large_steps_shrink_the_window_to_the_byte_bound():
    window = Window(16, max_bytes=1000)
    assert window.handed_on(1, 400) == 3  # 1000 // 400 = 2 steps ahead
    assert window.handed_on(2, 400) == 4
    assert window.handed_on(3, 5000) is None  # one step ahead: 4 already allows it
    assert window.handed_on(4, 5000) == 5
    assert window.handed_on(5, 10) == 6  # the largest step seen still counts


def test_once_everything_is_handed_on_the_adapter_may_always_send_more():
    """Whatever the sizes, the limit is above the last step handed on: never stuck."""
    for steps, max_bytes in [(1, 0), (2, 0), (5, 0), (16, 1 << 20), (3, 10)]:
        window = Window(steps, max_bytes)
        for seq in range(1, 200):
            window.handed_on(seq, (seq * 7919) % 3000)
            assert window.granted > seq, (steps, max_bytes, seq)


async def test_credits_only_grow_and_wake_the_waiter():
    credits = Credits(1)
    cancelled = asyncio.Event()
    assert credits.allows(1) and not credits.allows(2)
    waiting = asyncio.ensure_future(credits.wait(2, cancelled))
    await asyncio.sleep(0)
    credits.grant(1)  # a late or repeated Credit changes nothing
    await asyncio.sleep(0)
    assert not waiting.done()
    credits.grant(3)
    assert await waiting is True
    cancelled.set()
    assert await credits.wait(9, cancelled) is False


def test_without_initial_credits_there_is_no_flow_control():
    assert Credits(0).allows(10**9)


async def test_an_adapter_past_its_window_fails_the_stream_and_frees_its_steps():
    pending = Pending()
    queue = pending.expect_stream("r1", limit=2)
    for seq in (1, 2, 3):
        pending.step(StreamStep(id="r1", seq=seq, items=[b"x" * 1000]))
    assert queue.qsize() == 1
    assert isinstance(queue.get_nowait(), UpstreamError)
    assert pending.counters.overflowed == 1
    pending.step(StreamStep(id="r1", seq=4))
    assert queue.empty()  # dropped, counted as late
    assert pending.counters.late == 1


async def test_a_full_stream_queue_still_takes_the_bus_closing():
    pending = Pending()
    queue = pending.expect_stream("r1", limit=1)
    pending.step(StreamStep(id="r1", seq=1))
    pending.close(BusUnavailable("closing"))
    assert isinstance(queue.get_nowait(), BusUnavailable)
