"""Cancel reaches the saga however it races its request (requests and Cancels travel apart)."""

from __future__ import annotations

from busgate.bus.base import CANCEL_MEMORY_SIZE
from busgate.contracts.codec import encode
from busgate.contracts.wire import Cancel, Request
from tests.edge.memory_bus import MemoryBus


async def adapter_bus(seen: list) -> MemoryBus:
    bus = MemoryBus(node="adapter")

    async def handler(req, responder) -> None:
        seen.append((req.id, responder.cancelled.is_set()))

    await bus.serve(["demo"], handler)
    return bus


def request(request_id: str) -> bytes:
    return encode(Request(id=request_id, kind="stream", system="demo"))


async def test_a_cancel_before_its_request_drops_the_request():
    seen: list = []
    bus = await adapter_bus(seen)
    bus._on_control(encode(Cancel(id="r1")))
    bus._on_request(request("r1"))
    bus._on_request(request("r2"))
    await bus.drain()
    assert seen == [("r2", False)]


async def test_a_cancel_before_the_handler_runs_is_not_lost():
    seen: list = []
    bus = await adapter_bus(seen)
    bus._on_request(request("r1"))  # the handler task has not run yet
    bus._on_control(encode(Cancel(id="r1")))
    await bus.drain()
    assert seen == [("r1", True)]


async def test_remembered_cancels_are_bounded():
    bus = await adapter_bus([])
    for i in range(CANCEL_MEMORY_SIZE + 10):
        bus._on_control(encode(Cancel(id=f"r{i}")))
    assert len(bus._cancelled) == CANCEL_MEMORY_SIZE
    assert "r0" not in bus._cancelled


def test_an_edge_remembers_no_cancels():
    edge = MemoryBus(node="edge")
    edge._on_control(encode(Cancel(id="r1")))
    assert not edge._cancelled
