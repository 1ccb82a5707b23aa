"""'No responders' while the presence view shows a live adapter: retried within a short grace,
not answered 503; with no live adapter the call still fails at once.

A unit test on a scripted transport: the race it covers (nats-server answering "no
responders" just after a subscription) is too rare to provoke on a real server on demand.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from busgate.bus import base
from busgate.bus.base import Bus
from busgate.contracts.codec import decode, encode
from busgate.contracts.errors import NoResponders
from busgate.contracts.wire import Presence, Reply, Request, StreamStep
from tests.bus.conftest import SYSTEM, make_request


class RefusingBus(Bus):
    """Answers the first ``refusals`` requests "no responders" (as NATS does: after the
    send, from the server), then replies or streams one step."""

    requires_presence = False

    def __init__(self, refusals: float) -> None:
        super().__init__(node="edge")
        self.refusals = refusals
        self.sends: list[float] = []

    async def connect(self) -> None:
        pass

    async def _close_transport(self) -> None:
        pass

    @property
    def connected(self) -> bool:
        return True

    def reply_address(self, request_id: str) -> str:
        return f"reply.{request_id}"

    async def _send(self, dest: str, data: bytes, headers: dict[str, str], *, reply: str = ""):
        req = decode(data)
        assert isinstance(req, Request)
        self.sends.append(time.monotonic())
        loop = asyncio.get_running_loop()
        if self.refusals > 0:
            self.refusals -= 1
            loop.call_soon(self.pending.fail, req.id, NoResponders("no responders"))
        elif req.kind == "stream":
            step = StreamStep(id=req.id, seq=1, items=[b"1"], last=True)
            loop.call_soon(self._on_reply, encode(step))
        else:
            loop.call_soon(self._on_reply, encode(Reply(id=req.id, body=b"ok")))

    async def publish_command(self, name: str, data: bytes, headers=None) -> None:
        raise NotImplementedError

    async def _listen_requests(self, system: str) -> None:
        pass

    async def _stop_requests(self) -> None:
        pass


def with_adapter(bus: Bus) -> Bus:
    bus.presence.update(Presence(node="adapter-1", systems=(SYSTEM,), ttl=30))
    return bus


async def test_no_responders_is_retried_while_an_adapter_is_present():
    bus = with_adapter(RefusingBus(refusals=3))
    started = time.monotonic()
    reply = await bus.request(make_request("echo"))
    assert reply.body == b"ok"
    assert len(bus.sends) == 4
    assert time.monotonic() - started < base.NO_RESPONDERS_GRACE
    assert len(bus.pending) == 0


async def test_a_stream_is_retried_too():
    bus = with_adapter(RefusingBus(refusals=2))
    steps = [s async for s in bus.stream(make_request("s", kind="stream"), idle_timeout=5)]
    assert [s.items for s in steps] == [[b"1"]]
    assert len(bus.sends) == 3


async def test_without_a_live_adapter_no_responders_fails_at_once():
    bus = RefusingBus(refusals=1)
    with pytest.raises(NoResponders):
        await bus.request(make_request("echo"))
    assert len(bus.sends) == 1
    with pytest.raises(NoResponders):
        async for _ in RefusingBus(refusals=1).stream(
            make_request("s", kind="stream"), idle_timeout=5
        ):
            pass


async def test_an_adapter_that_never_answers_gives_503_after_the_grace_not_the_deadline():
    bus = with_adapter(RefusingBus(refusals=float("inf")))
    started = time.monotonic()
    with pytest.raises(NoResponders):
        await bus.request(make_request("echo", timeout=10))
    took = time.monotonic() - started
    assert took <= base.NO_RESPONDERS_GRACE + 0.1
    assert len(bus.sends) > 2


async def test_retries_stop_before_the_deadline():
    bus = with_adapter(RefusingBus(refusals=float("inf")))
    req = make_request("echo", timeout=0.03)
    with pytest.raises(NoResponders):
        await bus.request(req)
    assert bus.sends[-1] < time.monotonic()
    assert time.time() < req.deadline + 0.02
