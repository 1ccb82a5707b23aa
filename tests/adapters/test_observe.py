"""The adapter's spans in its Reply (``Request.spans_in_reply``): carried when the edge can
still take the reply, published by the adapter itself when the deadline is at hand, and
marked ``reply_too_large`` when the answer did not fit, published by the adapter when only
they would not fit. (Across real processes:
tests/e2e/test_telemetry.py.)"""

from __future__ import annotations

import time

import msgspec
import pytest

from busgate.adapters.observe import AdapterObserver
from busgate.bus import trace_export
from busgate.bus.base import Responder
from busgate.bus.spans import Kind, decode_batch, decode_served
from busgate.contracts.codec import decode
from busgate.contracts.wire import Reply, Request
from tests.edge.memory_bus import MemoryBus
from tests.edge.test_observe import MemorySink, with_telemetry

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def sink(monkeypatch) -> MemorySink:
    memory = MemorySink()
    monkeypatch.setattr(trace_export, "open_sink", lambda *a, **kw: memory)
    return memory


async def answered(
    sink: MemorySink,
    *,
    seconds_left: float,
    body: bytes = b"{}",
    limit: int = 0,
    served: bool = True,
):
    """Handle one traced request whose edge asks for the spans: (the Reply sent, the span
    batches the adapter published itself)."""
    bus = MemoryBus()
    if limit:
        bus.max_message = limit
    observer = AdapterObserver(with_telemetry(sampling=1.0), node="a1")
    await observer.start(bus, None)
    req = Request(
        id="r1",
        system="demo",
        path="echo",
        traceparent=TRACEPARENT,
        reply_to="elsewhere.r1",
        deadline=time.time() + seconds_left,
        spans_in_reply=True,
        served_in_reply=served,
    )

    async def handler(req: Request, responder: Responder) -> None:
        await responder.reply(Reply(id=req.id, body=body))

    await observer.handle(handler, req, Responder(bus, req))
    await observer.close()  # publishes what the adapter kept for the bus
    (reply,) = [decode(data) for dest, data, _ in bus.sent if dest == "elsewhere.r1"]
    return reply, [decode_batch(data) for _, data in sink.published]


async def test_the_spans_travel_in_the_reply(sink):
    reply, published = await answered(sink, seconds_left=10)
    assert published == [] and reply.spans == b""
    served = decode_served(reply.served)
    assert (served.service, served.instance) == ("busgate-adapter", "a1")
    assert served.group == "busgate.adapter.demo" and served.status == 0
    assert len(served.span_id) == 16 and served.span_id != "00f067aa0ba902b7"
    assert 0 < served.start <= served.end <= time.time_ns()


async def test_an_edge_from_before_reply_served_gets_a_span_batch(sink):
    """Rolling upgrades: an edge that asks for the spans but does not read ``Reply.served``
    gets them as it did, a batch in ``Reply.spans``."""
    reply, published = await answered(sink, seconds_left=10, served=False)
    assert published == [] and not reply.served
    batch = decode_batch(reply.spans)
    assert (batch.service, batch.instance) == ("busgate-adapter", "a1")
    (consumer,) = batch.spans
    assert consumer.kind == Kind.CONSUMER and consumer.parent_id == "00f067aa0ba902b7"


async def test_near_the_deadline_the_adapter_publishes_them_itself(sink):
    """Its reply may reach the edge after the edge gave up (and be dropped with the spans)."""
    reply, published = await answered(sink, seconds_left=0.1)
    assert reply.spans == b"" and not reply.served
    (batch,) = published
    (consumer,) = batch.spans
    assert consumer.kind == Kind.CONSUMER and consumer.parent_id == "00f067aa0ba902b7"
    assert consumer.attributes["busgate.request_id"] == "r1"
    assert consumer.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"


async def test_a_reply_too_large_carries_spans_that_say_so(sink):
    reply, published = await answered(sink, seconds_left=10, body=b"x" * 5000, limit=2000)
    assert reply.error.code == "reply_too_large" and published == []
    served = decode_served(reply.served)
    assert served.status == 2 and served.error_type == "reply_too_large"


@pytest.mark.parametrize("body_size", [100, 2500])
async def test_an_answer_within_the_limit_carries_its_spans(sink, body_size):
    """Encoded once with its spans (a body within half the limit), or checked against the
    limit first (a larger one): either way the spans say the call went well."""
    reply, published = await answered(sink, seconds_left=10, body=b"x" * body_size, limit=4000)
    assert reply.error is None and reply.body == b"x" * body_size and published == []
    assert decode_served(reply.served).status == 0


async def test_spans_that_would_take_the_answer_over_the_limit_are_published_instead(sink):
    """The answer goes whole and without them; the adapter publishes them (not lost)."""
    reply, published = await answered(sink, seconds_left=10, body=b"x" * 1950, limit=2000)
    assert reply.error is None and reply.body == b"x" * 1950
    assert reply.spans == b"" and not reply.served
    (batch,) = published
    (consumer,) = batch.spans
    assert (batch.service, batch.instance) == ("busgate-adapter", "a1")
    assert consumer.kind == Kind.CONSUMER and consumer.status == 0
    assert consumer.attributes["busgate.request_id"] == "r1"


async def test_without_the_request_asking_the_adapter_publishes_them(sink):
    """An older edge does not ask: the adapter exports its spans as before."""
    bus = MemoryBus()
    observer = AdapterObserver(with_telemetry(sampling=1.0), node="a1")
    await observer.start(bus, None)
    req = Request(id="r2", system="demo", traceparent=TRACEPARENT, reply_to="elsewhere.r2")

    async def handler(req: Request, responder: Responder) -> None:
        await responder.reply(Reply(id=req.id))

    await observer.handle(handler, req, Responder(bus, req))
    await observer.close()
    (reply,) = [decode(data) for dest, data, _ in bus.sent if dest == "elsewhere.r2"]
    assert reply.spans == b"" and len(sink.published) == 1
    assert msgspec.msgpack.decode(sink.published[0][1])[1] == "busgate-adapter"


def test_runner_calls_are_counted_by_system_and_status():
    from busgate.adapters import observe

    metrics = observe.AdapterMetrics()
    for status in ["200", "200", "500", "404", "503", "503", "200"]:
        metrics.runner_calls.labels("demo", status).inc()
    value = metrics.registry.get_sample_value
    counts = {
        s: value("busgate_runner_calls_total", {"system": "demo", "status": s})
        for s in ("200", "500", "404", "503")
    }
    assert counts == {"200": 3.0, "500": 1.0, "404": 1.0, "503": 2.0}
