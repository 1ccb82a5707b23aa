"""``busgate trace`` keeps the asked call's spans out of a message that holds its bucket's
calls (``bus.trace_export``)."""

from __future__ import annotations

from busgate.bus.spans import Kind, encode_batch
from busgate.bus.tracing import REQUEST_ID
from busgate.trace import decode, of_call


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
