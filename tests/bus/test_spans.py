"""Lean spans: their wire form round-trips, tolerates newer fields, and converts to the
OpenTelemetry SDK's spans with the right ids, parent, links and status (what the OTLP
exporter sends; across real processes: tests/e2e/test_telemetry.py)."""

from __future__ import annotations

import msgspec
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import SpanKind, StatusCode

from busgate.bus import tracing as tr
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
        (1, "s", "i", [("a" * 32, "b" * 16, "", "n", 2, 1, 2, {}, 0, "", [], [], "new")], [], "x")
    )
    (span,) = decode_batch(newer).spans
    assert span.name == "n"


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
