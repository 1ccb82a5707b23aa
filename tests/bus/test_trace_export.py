"""The bus export's batching: a flush goes out as a message per bucket of trace and request
ids (at most ``BUCKETS ** 2``), every span in its call's bucket exactly once, and a bucket
over the sink's message limit split rather than refused. (On real brokers, read back by
``busgate trace``: tests/e2e/test_telemetry.py.)"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from busgate.brokers import NatsServer
from busgate.bus import trace_export
from busgate.bus.naming import Names
from busgate.bus.nats import transport
from busgate.bus.spans import Handling, Kind, decode_batch, encode_batch
from busgate.bus.trace_export import BUCKETS, BusSpanProcessor, NatsTraceSink, TraceSink, bucket
from busgate.bus.tracing import REQUEST_ID, new_trace_id


class ListSink(TraceSink):
    def __init__(self, max_message: int = trace_export.MAX_MESSAGE) -> None:
        self.max_message = max_message
        self.published: list[tuple[str, bytes]] = []

    async def publish(self, bucket: str, data: bytes) -> None:
        self.published.append((bucket, data))


def row(trace_id: str, span_id: str, request_id: str, kind: Kind = Kind.SERVER) -> tuple:
    attributes = {REQUEST_ID: request_id, "url.path": "/api/request/demo/echo"}
    return (trace_id, span_id, "", "POST", kind, 1, 2, attributes, 0, "", (), ())


def end_call(processor: BusSpanProcessor, trace_id: str, span_id: str, request_id: str) -> None:
    """An edge's SERVER span of a call, as its record (``Tracing.handling``), ended."""
    values = ["POST", "/api/request/{channel}/{path}", "/api/request/demo/echo", "", request_id]
    listed = f"00-{trace_id}-{span_id}-01"
    Handling(processor.on_call, processor.on_end, (trace_id, span_id, ""), values, listed, {}).end()


async def flushed(processor: BusSpanProcessor) -> None:
    processor._flush()
    await asyncio.gather(*processor._sending)


def unpacked(sink: ListSink) -> list[tuple[str, str, str]]:
    """(bucket, trace id, request id) of every span published, nested batches included."""
    return [
        (key, span.trace_id, span.attributes[REQUEST_ID])
        for key, data in sink.published
        for batch in decode_batch(data).all()
        for span in batch.spans
    ]


async def test_a_flush_goes_out_as_one_message_per_bucket_with_every_span_once():
    sink = ListSink()
    processor = BusSpanProcessor(sink, service="busgate-edge", node="e1", delay=60)
    calls = [(new_trace_id(), f"e1-{i}") for i in range(500)]
    for i, (trace_id, request_id) in enumerate(calls):
        processor.on_end(row(trace_id, f"{i:016x}", request_id, Kind.PRODUCER))
        end_call(processor, trace_id, f"{i:015x}b", request_id)
        adapter = encode_batch("busgate-adapter", "a1", [row(trace_id, f"{i:015x}a", request_id)])
        processor.carry(trace_id, request_id, adapter)
    await flushed(processor)
    assert len(sink.published) <= BUCKETS * BUCKETS < len(calls)
    seen = unpacked(sink)
    assert sorted((t, r) for _, t, r in seen) == sorted(calls * 3)  # spans, records, carried
    assert all(key == bucket(t, r) for key, t, r in seen)
    assert len({key for key, _ in sink.published}) == len(sink.published)


async def test_a_bucket_over_the_message_limit_is_split_and_nothing_is_lost():
    sink = ListSink(max_message=4096)
    processor = BusSpanProcessor(sink, service="busgate-edge", node="e1", delay=60)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"  # one trace, one request: one bucket
    for i in range(200):
        processor.on_end(row(trace_id, f"{i:016x}", "r1", Kind.PRODUCER))
        end_call(processor, trace_id, f"{i:015x}b", "r1")
        adapter = encode_batch("busgate-adapter", "a1", [row(trace_id, f"{i:015x}a", "r1")])
        processor.carry(trace_id, "r1", adapter)
    await flushed(processor)
    assert len(sink.published) > 1
    assert all(len(data) <= 4096 for _, data in sink.published)
    assert {key for key, _ in sink.published} == {bucket(trace_id, "r1")}
    spans = [span.span_id for _, data in sink.published for span in decode_batch(data).spans]
    assert len(unpacked(sink)) == 600 and len(set(spans)) == 200 and processor.dropped == 0


def test_buckets_are_the_same_in_every_process_and_in_range():
    """Characters, not ``hash()`` (randomised per process): a reader finds what any node
    wrote."""
    assert bucket("4bf92f3577b34da6a3ce929d0e0e4736", "dev-3f9a1c-7") == "6.7"
    keys = {bucket(new_trace_id(), f"r{i}") for i in range(2000)}
    assert len(keys) == BUCKETS * BUCKETS
    assert bucket("not hex!", "") in {f"0.{r}" for r in range(BUCKETS)}


async def test_a_node_past_max_batch_spans_flushes_before_its_timer_and_loses_none():
    sink = ListSink()
    processor = BusSpanProcessor(sink, service="busgate-edge", node="e1", delay=60)
    calls = [(new_trace_id(), f"e1-{i}") for i in range(2 * trace_export.MAX_BATCH + 5)]
    for i, (trace_id, request_id) in enumerate(calls):
        processor.on_end(row(trace_id, f"{i:016x}", request_id))
    await asyncio.gather(*processor._sending)
    assert len(unpacked(sink)) == 2 * trace_export.MAX_BATCH  # the timer is 60 s away
    await flushed(processor)
    assert sorted((t, r) for _, t, r in unpacked(sink)) == sorted(calls)


@pytest.mark.nats
async def test_the_nats_trace_stream_is_kept_in_memory_unless_asked_and_keeps_what_exists(
    nats_server: NatsServer,
) -> None:
    """Memory by default (storing span messages on disk was most of nats-server's cost of
    tracing), file when configured, and a stream another node made keeps its storage
    (JetStream refuses to change it): a second node must still start."""
    from nats.js.api import StorageType

    nc = await transport.connect(nats_server.url)
    try:
        js = nc.jetstream()
        for asked, first in (("memory", StorageType.MEMORY), ("file", StorageType.FILE)):
            names = Names(f"t{uuid.uuid4().hex[:8]}")
            await NatsTraceSink(nc, names, max_age=60, storage=asked).start()
            info = await js.stream_info(trace_export.stream_name(names.prefix))
            assert info.config.max_bytes == trace_export.MAX_BYTES
            other = "file" if asked == "memory" else "memory"
            second = NatsTraceSink(nc, names, max_age=120, max_bytes=2**20, storage=other)
            await second.start()  # a second node, with another config
            info = await js.stream_info(trace_export.stream_name(names.prefix))
            assert info.config.storage == first
            # the rest of its config is updated (telemetry.bus_max_age, bus_max_bytes)
            assert (info.config.max_age, info.config.max_bytes) == (120, 2**20)
            await js.delete_stream(trace_export.stream_name(names.prefix))
    finally:
        await nc.close()
