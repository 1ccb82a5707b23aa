"""``busgate trace`` keeps the asked call's spans out of a message that holds its bucket's
calls (``bus.trace_export``)."""

from __future__ import annotations

from msgspec import msgpack

from busgate.bus.spans import Kind, encode_batch
from busgate.bus.tracing import REQUEST_ID
from busgate.trace import decode, of_call, waterfall


def row(trace_id: str, span_id: str, request_id: str) -> tuple:
    return (
        trace_id,
        span_id,
        "",
        "POST",
        Kind.SERVER,
        1,
        2,
        {REQUEST_ID: request_id},
        0,
        "",
        (),
        (),
    )


T1, T2 = "1" * 32, "2" * 32


def test_only_the_asked_call_is_kept_from_a_shared_message():
    adapter = encode_batch(
        "busgate-adapter", "a1", [row(T1, "c" * 16, "r1"), row(T2, "d" * 16, "r2")]
    )
    message = encode_batch(
        "busgate-edge", "e1", [row(T1, "a" * 16, "r1"), row(T2, "b" * 16, "r2")], [adapter]
    )
    spans = decode([message])
    assert {s.span_id for s in of_call(spans, request_id="r1")} == {"a" * 16, "c" * 16}
    assert {s.span_id for s in of_call(spans, trace_id=T2)} == {"b" * 16, "d" * 16}
    assert of_call(spans, request_id="r3") == []


def call_record(trace_id: str, span_id: str, values: list, status_code: object = 200) -> tuple:
    """An edge's SERVER span as it travels (``bus.spans.Handled``)."""
    return (trace_id, span_id, "", 1, 2_000_000, values, status_code)


def test_a_call_record_is_kept_by_request_id_and_drawn_as_the_http_server_row():
    values = ["POST", "/api/request/{channel}/{path}", "/api/request/demo/x", "", "r1", "demo"]
    message = msgpack.encode((1, "busgate-edge", "e1", [], [], [call_record(T1, "a" * 16, values)]))
    (span,) = of_call(decode([message]), request_id="r1")
    assert (span.kind, span.name, span.attributes["http.response.status_code"]) == (
        Kind.SERVER,
        "POST /api/request/{channel}/{path}",
        200,
    )
    (line,) = [line for line in waterfall([span]) if "http server" in line]
    assert "200" in line


def test_hostile_call_records_are_skipped_or_drawn_never_raised():
    """Anything on the trace subject may be written by anyone with access to the bus."""
    odd = [
        call_record(T1, "b" * 16, [1, {"x": [2]}]),  # too few values, not strings
        call_record(T1, "c" * 16, []),
        call_record(T1, "d" * 16, ["GET", "/r", "/r", "", "r2", "c", "one too many"]),
    ]
    wrong_type = msgpack.encode((1, "e", "e1", [], [], [call_record(T1, "e" * 16, [], "x")]))
    not_a_list = msgpack.encode((1, "e", "e1", [], [], {"calls": 1}))
    message = msgpack.encode((1, "busgate-edge", "e1", [], [], odd))
    spans = decode([wrong_type, not_a_list, message])
    assert sorted(s.span_id for s in spans) == ["b" * 16, "c" * 16, "d" * 16]
    assert waterfall(of_call(spans, trace_id=T1))  # drawn, whatever the values
