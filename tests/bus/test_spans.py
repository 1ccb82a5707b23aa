"""Lean spans: their wire form round-trips, tolerates newer fields, and converts to the
OpenTelemetry SDK's spans with the right ids, parent, links and status (what the OTLP
exporter sends; across real processes: tests/e2e/test_telemetry.py)."""

from __future__ import annotations

import time

import msgspec
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import SpanKind, StatusCode

from busgate.bus import tracing as tr
from busgate.bus.naming import Names
from busgate.bus.otlp import readable
from busgate.bus.spans import (
    ERROR,
    Row,
    batch_head,
    decode_batch,
    encode_batch,
    encode_span,
    join_batch,
)
from busgate.contracts.config import Telemetry
from busgate.contracts.wire import Request
from tests.bus.test_trace_export import ListSink

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
ISSUER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def recorded() -> tuple[tr.Tracing, list[Row]]:
    tracing = tr.Tracing(Telemetry(sampling=1.0), service="svc", node="n1")
    rows: list[Row] = []

    class Keep:
        def on_end(self, span: Row) -> None:
            rows.append(span)

    tracing.exporters.append(Keep())
    tracing._wire()
    return tracing, rows


def test_spans_round_trip_through_their_wire_form():
    tracing, rows = recorded()
    span = tracing.start("p", tr.Kind.CONSUMER, PARENT, {tr.REQUEST_ID: "r-1"}, links=(ISSUER,))
    span.add_event("step", {"seq": 1})
    tr.fail(span, "upstream_error", "runner answered 500")
    span.end()
    span.end()  # a second end does nothing
    assert len(rows) == 1
    batch = decode_batch(encode_batch("svc", "n1", rows))
    (data,) = batch.spans
    assert (batch.service, batch.instance) == ("svc", "n1")
    assert data.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert data.parent_id == "00f067aa0ba902b7" and data.span_id == span.span_id
    assert span.traceparent == f"00-{data.trace_id}-{data.span_id}-01"
    assert data.kind == tr.Kind.CONSUMER and data.status == ERROR
    assert data.attributes == {tr.REQUEST_ID: "r-1", tr.ERROR_CODE: "upstream_error"}
    assert [(e.name, e.attributes) for e in data.events] == [("step", {"seq": 1})]
    assert [(k.trace_id, k.span_id) for k in data.links] == [
        ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
    ]
    assert data.start <= data.end


@pytest.mark.parametrize("spans", [0, 1, 15, 16, 70_000])
def test_a_batch_joined_from_spans_encoded_one_by_one_is_the_batch_encoded_at_once(spans):
    """The bus export encodes each span as it ends and joins them at the flush; the sizes
    cross msgpack's three array headers (fixarray, array 16, array 32)."""
    rows = [
        ("a" * 32, f"{i:016x}", "", "n", 2, i, i + 1, {"i": i}, 0, "", (), ()) for i in range(spans)
    ]
    more = [encode_batch("adapter", "a1", rows[:2]), encode_batch("adapter", "a2", rows[:1])]
    for carried in ([], more):
        joined = join_batch(batch_head("svc", "n1"), [encode_span(r) for r in rows], carried)
        assert decode_batch(joined) == decode_batch(encode_batch("svc", "n1", rows, carried))


def test_a_newer_node_may_add_fields():
    newer = msgspec.msgpack.encode(
        (
            1,
            "s",
            "i",
            [("a" * 32, "b" * 16, "", "n", 2, 1, 2, {}, 0, "", [], [], [], "new")],
            [],
            [("c" * 32, "d" * 16, "", 1, 2, ["GET", "/r"], 200, 0, "", "", [], [], "new")],
            "x",
        )
    )
    (span, call) = decode_batch(newer).all()[0].spans
    assert span.name == "n" and call.name == "GET /r"


def test_a_batch_from_before_call_records_decodes():
    """An edge from before ``SpanBatch.calls`` sent its SERVER spans as spans (rolling
    upgrades: ``busgate trace`` still reads them)."""
    older = msgspec.msgpack.encode(
        (1, "s", "i", [("a" * 32, "b" * 16, "", "POST /r", 2, 1, 2, {}, 0, "")], [])
    )
    (batch,) = decode_batch(older).all()
    assert [s.name for s in batch.spans] == ["POST /r"] and batch.calls == []


def producer_and_client(tracing: tr.Tracing) -> tuple[tr.Span, list, list]:
    """A SERVER span with a PRODUCER child that failed, and a CLIENT child that answered
    (their ``ChildData`` fields)."""
    server = tracing.start(
        "POST /api/request/{channel}/{path}", tr.Kind.SERVER, PARENT, {tr.REQUEST_ID: "r-1"}
    )
    values = ["nats", "busgate.req.demo", "demo", "r-1", "request"]
    producer = [tr.new_span_id(), tr.Kind.PRODUCER, server.start, time.time_ns(), values]
    server.ended_child([*producer, tr.ERROR, "no reply in 5 s", "timeout"])
    client_values = ["POST", "http://runner/x", "demo", 200]
    client = [tr.new_span_id(), tr.Kind.CLIENT, time.time_ns(), time.time_ns(), client_values]
    server.ended_child([*client, tr.UNSET, "", ""])
    return server, producer, client


def test_children_read_back_as_the_spans_they_stand_for():
    """A PRODUCER or CLIENT span recorded inside its parent's row reads back, from the bus
    and for OTLP, as a span of its own: ids, parent, name, attributes, status."""
    tracing, rows = recorded()
    server, producer, client = producer_and_client(tracing)
    server.end()
    assert len(rows) == 1  # one row: the children are inside it
    family = decode_batch(encode_batch("svc", "n1", rows)).spans[0].family()
    assert [s.span_id for s in family] == [server.span_id, producer[0], client[0]]
    _, got_producer, got_client = family
    assert {s.trace_id for s in family} == {server.trace_id}
    assert got_producer.parent_id == got_client.parent_id == server.span_id
    assert (got_producer.name, got_producer.kind) == ("busgate.req.demo publish", tr.Kind.PRODUCER)
    assert got_producer.attributes == {
        "messaging.system": "nats",
        "messaging.destination.name": "busgate.req.demo",
        "messaging.operation.type": "send",
        "busgate.system": "demo",
        "messaging.message.id": "r-1",
        "busgate.kind": "request",
        tr.REQUEST_ID: "r-1",
        tr.ERROR_CODE: "timeout",
    }
    assert (got_producer.status, got_producer.message) == (ERROR, "no reply in 5 s")
    assert (got_client.name, got_client.kind, got_client.status) == ("POST", tr.Kind.CLIENT, 0)
    assert got_client.attributes == {
        "http.request.method": "POST",
        "url.full": "http://runner/x",
        "busgate.system": "demo",
        "http.response.status_code": 200,
        tr.REQUEST_ID: "r-1",
    }
    assert server.start <= got_producer.start <= got_producer.end <= server.end_time
    otlp = readable(rows, Resource.create({}), None)
    assert [(s.name, s.kind, s.parent.span_id if s.parent else 0) for s in otlp] == [
        ("POST /api/request/{channel}/{path}", SpanKind.SERVER, 0x00F067AA0BA902B7),
        ("busgate.req.demo publish", SpanKind.PRODUCER, int(server.span_id, 16)),
        ("POST", SpanKind.CLIENT, int(server.span_id, 16)),
    ]
    assert otlp[1].status.status_code == StatusCode.ERROR
    assert otlp[2].attributes["http.response.status_code"] == 200


def test_a_child_that_outlives_its_parent_is_exported_alone_when_it_ends():
    """The edge answered (its SERVER span ended) before the bus request it started did."""
    tracing, rows = recorded()
    server = tracing.start("s", tr.Kind.SERVER, PARENT, {tr.REQUEST_ID: "r-2"})
    server.end()
    assert len(rows) == 1 and not decode_batch(encode_batch("s", "n", rows)).spans[0].children
    late_id = tr.new_span_id()
    values = ["nats", "d", "demo", "r-2", "request"]
    server.ended_child([late_id, tr.Kind.PRODUCER, server.start, time.time_ns(), values, 0, "", ""])
    assert len(rows) == 2
    (alone,) = decode_batch(encode_batch("s", "n", rows[1:])).spans
    assert (alone.span_id, alone.parent_id, alone.kind) == (
        late_id,
        server.span_id,
        tr.Kind.PRODUCER,
    )
    assert alone.attributes[tr.REQUEST_ID] == "r-2" and alone.end >= server.end_time


def test_an_older_reader_reads_a_parent_without_its_children():
    """A batch with children decodes for a reader that knows no children field."""

    class OldSpanData(msgspec.Struct, array_like=True):
        trace_id: str
        span_id: str
        parent_id: str
        name: str
        kind: int
        start: int
        end: int
        attributes: dict = {}
        status: int = 0
        message: str = ""
        events: list = []
        links: list = []

    tracing, rows = recorded()
    server, _, _ = producer_and_client(tracing)
    server.end()
    (old,) = msgspec.msgpack.decode(encode_batch("s", "n", rows), type=tuple)[3]
    assert msgspec.convert(old, OldSpanData).span_id == server.span_id


def test_an_invalid_parent_starts_a_new_trace():
    tracing, _ = recorded()
    hostile = (
        "",
        "garbage",
        "00-" + "0" * 32 + "-00f067aa0ba902b7-01",  # the all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01",  # the all-zero span id
        "ff" + PARENT[2:],  # version ff is invalid
        PARENT.upper(),
        PARENT + "-00",  # a longer one
        PARENT + "\n",
        PARENT[:-1] + "g",
        PARENT.replace("-", "_"),
    )
    for parent in hostile:
        span = tracing.start("s", tr.Kind.SERVER, parent, {})
        assert span.parent_id == "" and len(span.trace_id) == 32
        assert span.trace_id != "4bf92f3577b34da6a3ce929d0e0e4736"


def test_otlp_conversion_keeps_ids_parent_links_and_status():
    tracing, rows = recorded()
    span = tracing.start("p", tr.Kind.CONSUMER, PARENT, {"k": "v"}, links=(ISSUER,))
    tr.fail(span, "upstream_error")
    span.end()
    (sdk,) = readable(rows, Resource.create({"service.name": "svc"}), None)
    assert sdk.context.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    assert sdk.context.span_id == int(span.span_id, 16)
    assert sdk.parent is not None and sdk.parent.span_id == 0x00F067AA0BA902B7
    assert sdk.parent.is_remote  # a CONSUMER's parent is in the producing process
    assert sdk.kind == SpanKind.CONSUMER
    assert sdk.status.status_code == StatusCode.ERROR
    (link,) = sdk.links
    assert link.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert sdk.attributes is not None and sdk.attributes["error.type"] == "upstream_error"
    assert sdk.start_time == span.start and sdk.end_time == span.end_time


CALL_VALUES = [
    "POST",
    "/api/request/{channel}/{path}",
    "/api/request/demo/x",
    "10.0.0.1",
    "r-1",
    "demo",
]
"""A call's ``bus.spans.SERVER_KEYS`` values."""


async def test_a_call_record_reads_back_as_the_edge_server_span():
    """An edge's SERVER span travels as a record (``SpanBatch.calls``); readers of the bus
    and the node's other exporters (OTLP) get the span a ``Span`` would have been: name,
    attributes, status, children; the call's other spans find it as their parent."""
    tracing, rows = recorded()  # rows: what an OTLP exporter beside the bus export gets
    sink = ListSink()
    await tracing.export_to(sink)
    context = ("4bf92f3577b34da6a3ce929d0e0e4736", tr.new_span_id(), "00f067aa0ba902b7")
    listed = f"00-{context[0]}-{context[1]}-01"
    call = tracing.handling(context, list(CALL_VALUES), listed)
    assert tracing.open[listed] is call
    other = tracing.start("auth", tr.Kind.CLIENT, listed, {tr.REQUEST_ID: "r-1"})
    assert (other.trace_id, other.parent_id) == (context[0], context[1])
    other.end()
    producer_id = tr.new_span_id()
    values = ["nats", "busgate.req.demo", "demo", "r-1", "request"]
    call.ended_child([producer_id, tr.Kind.PRODUCER, 1, 2, values, ERROR, "no reply", "timeout"])
    call.status_code = 504
    call.error("timeout")
    call.end()
    call.end()  # a second end does nothing
    assert listed not in tracing.open
    await tracing.close()  # flushes the batch

    spans = [s for _, data in sink.published for b in decode_batch(data).all() for s in b.spans]
    (server,) = [s for s in spans if s.kind == tr.Kind.SERVER]
    assert (server.trace_id, server.span_id, server.parent_id) == context
    assert server.name == "POST /api/request/{channel}/{path}"
    assert server.attributes == {
        "http.request.method": "POST",
        "http.route": "/api/request/{channel}/{path}",
        "url.path": "/api/request/demo/x",
        "client.address": "10.0.0.1",
        tr.REQUEST_ID: "r-1",
        "busgate.channel": "demo",
        "http.response.status_code": 504,
        tr.ERROR_CODE: "timeout",
    }
    assert (server.status, server.message) == (ERROR, "timeout")
    assert server.start <= server.end
    (_, producer) = server.family()
    assert (producer.span_id, producer.parent_id, producer.kind) == (
        producer_id,
        context[1],
        tr.Kind.PRODUCER,
    )
    (row,) = [r for r in rows if r[4] == tr.Kind.SERVER]
    assert row[:10] == tuple(msgspec.structs.astuple(server))[:10]
    (sdk,) = [s for s in readable([row], Resource.create({}), None) if s.kind == SpanKind.SERVER]
    assert sdk.status.status_code == StatusCode.ERROR and sdk.context.span_id == int(context[1], 16)


def test_a_call_record_without_the_bus_export_and_its_late_child_go_out_as_rows():
    tracing, rows = recorded()
    context = ("4bf92f3577b34da6a3ce929d0e0e4736", tr.new_span_id(), "")
    call = tracing.handling(context, list(CALL_VALUES), f"00-{context[0]}-{context[1]}-01")
    call.status_code = 200
    call.end()
    ((server,),) = [[r for r in rows if r[4] == tr.Kind.SERVER]]
    assert server[7]["http.response.status_code"] == 200 and tr.ERROR_CODE not in server[7]
    late_id = tr.new_span_id()
    values = ["nats", "d", "demo", "r-1", "request"]
    call.ended_child([late_id, tr.Kind.PRODUCER, call.start, time.time_ns(), values, 0, "", ""])
    (late,) = rows[1:]
    assert (late[1], late[2], late[4]) == (late_id, context[1], tr.Kind.PRODUCER)
    assert late[7][tr.REQUEST_ID] == "r-1"


def test_a_served_record_reads_back_as_the_answering_nodes_spans():
    """The adapter's CONSUMER span and its runner call travel as a ``Served`` record in its
    Reply, then inside the edge's PRODUCER child; readers get the spans the adapter would
    have exported, as its node's (``SpanBatch.all``), and the edge's OTLP export leaves
    them to the adapter's."""
    adapter_tracing, adapter_rows = recorded()
    messaging = tr.Messaging("nats", Names("busgate"), "process")
    tracing, rows = recorded()
    server = tracing.start("POST /x", tr.Kind.SERVER, PARENT, {tr.REQUEST_ID: "r-9"})
    producer_id = tr.new_span_id()
    producer_values = ["nats", "busgate.req.demo", "demo", "r-9", "request"]
    req = Request(
        id="r-9",
        system="demo",
        traceparent=f"00-{server.trace_id}-{producer_id}-01",
    )
    serving = messaging.serving(adapter_tracing, req)
    assert adapter_tracing.open[serving.traceparent] is serving
    serving.ended_child([tr.new_span_id(), tr.Kind.CLIENT, 1, 2, ["POST", "u", "demo", 503]])
    serving.error("upstream_error")
    served = msgspec.Raw(serving.finish("busgate-adapter", "a1"))
    assert serving.traceparent not in adapter_tracing.open and adapter_rows == []
    server.ended_child([producer_id, tr.Kind.PRODUCER, 0, 5, producer_values, 0, "", "", served])
    server.end()

    edge, adapter = decode_batch(encode_batch("busgate-edge", "e1", rows)).all()
    assert (edge.service, adapter.service, adapter.instance) == (
        "busgate-edge",
        "busgate-adapter",
        "a1",
    )
    (consumer,) = adapter.spans
    consumer_span, client = consumer.family()
    assert (consumer_span.trace_id, consumer_span.parent_id) == (server.trace_id, producer_id)
    assert (consumer_span.span_id, consumer_span.name) == (
        serving.span_id,
        "busgate.req.demo process",
    )
    assert consumer_span.attributes == {
        "messaging.system": "nats",
        "messaging.operation.type": "process",
        "messaging.destination.name": "busgate.req.demo",
        "busgate.system": "demo",
        "messaging.consumer.group.name": "busgate.adapter.demo",
        "messaging.message.id": "r-9",
        "busgate.kind": "request",
        tr.REQUEST_ID: "r-9",
        tr.ERROR_CODE: "upstream_error",
    }
    assert consumer_span.status == ERROR
    assert (client.parent_id, client.kind) == (serving.span_id, tr.Kind.CLIENT)
    assert client.attributes[tr.REQUEST_ID] == "r-9"
    # The same spans when the adapter exports the record itself (its Reply did not take it).
    assert serving.row()[:10] == tuple(msgspec.structs.astuple(consumer_span))[:10]
    otlp = readable(rows, Resource.create({}), None)
    assert [s.kind for s in otlp] == [SpanKind.SERVER, SpanKind.PRODUCER]
