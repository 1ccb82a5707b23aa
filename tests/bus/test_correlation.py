import asyncio

import pytest

from bus.correlation import Pending
from contracts.errors import NoResponders
from contracts.wire import Reply, StreamStep


async def test_reply_resolves_the_waiting_request():
    pending = Pending()
    fut = pending.expect_reply("r1")
    pending.resolve(Reply(id="r1", body=b"ok"))
    assert (await fut).body == b"ok"


async def test_reply_nobody_waits_for_is_counted_late():
    pending = Pending()
    pending.expect_reply("r1")
    pending.discard("r1")
    pending.resolve(Reply(id="r1"))
    pending.step(StreamStep(id="r2", seq=1))
    assert pending.counters.late == 2
    assert len(pending) == 0


async def test_steps_queue_in_order_and_failures_reach_streams():
    pending = Pending()
    queue = pending.expect_stream("s")
    pending.step(StreamStep(id="s", seq=1))
    pending.step(StreamStep(id="s", seq=2))
    pending.fail("s", NoResponders("none"))
    assert [(await queue.get()).seq for _ in range(2)] == [1, 2]
    assert isinstance(await queue.get(), NoResponders)


async def test_close_fails_every_waiting_request():
    pending = Pending()
    fut = pending.expect_reply("r1")
    pending.close(NoResponders("closing"))
    with pytest.raises(NoResponders):
        await asyncio.wait_for(fut, 1)
