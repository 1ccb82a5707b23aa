import asyncio
import time

import pytest

from busgate.bus.correlation import Pending
from busgate.contracts.errors import NoResponders
from busgate.contracts.wire import Reply, StreamStep


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


async def test_a_reply_not_in_by_its_deadline_fails_the_wait():
    pending = Pending()
    fut = pending.expect_reply("r1", time.time() + 0.05)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(fut, 5)
    pending.discard("r1")
    assert not pending._slots and not pending._slot_of


async def test_a_finished_request_leaves_no_deadline_behind():
    pending = Pending()
    fut = pending.expect_reply("r1", time.time() + 60)
    pending.resolve(Reply(id="r1"))
    await fut
    pending.discard("r1")
    assert not any(pending._slots.values()) and not pending._slot_of
