"""The edge's telemetry hooks on an in-memory bus: off means off, the sampling decision, the
spans an edge makes and what it publishes on the bus, JSON log ids. (Across real processes
and brokers: tests/e2e/test_telemetry.py.)"""

from __future__ import annotations

import json
import logging

import msgspec
import pytest

from busgate.bus import calllog, trace_export
from busgate.bus.base import Responder
from busgate.bus.trace_export import TraceSink
from busgate.contracts.codec import decode
from busgate.contracts.config import Config
from busgate.contracts.wire import Request
from busgate.edge import observe
from busgate.trace import PRODUCER, SERVER
from busgate.trace import decode as decode_spans
from tests.edge.conftest import echo, make_config


def with_telemetry(**telemetry: object) -> Config:
    return msgspec.structs.replace(
        make_config(), telemetry=msgspec.convert(telemetry, type(make_config().telemetry))
    )


class MemorySink(TraceSink):
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    async def publish(self, bucket: str, data: bytes) -> None:
        self.published.append((bucket, data))


@pytest.fixture
def sink(monkeypatch) -> MemorySink:
    memory = MemorySink()
    monkeypatch.setattr(trace_export, "open_sink", lambda *a, **kw: memory)
    return memory


def sent(bus) -> list[Request]:
    return [m for _, data, _ in bus.sent if isinstance(m := decode(data), Request)]


@pytest.mark.parametrize(
    "telemetry", [{}, {"sampling": 0.0, "otlp_endpoint": "http://127.0.0.1:9/v1/traces"}]
)
async def test_off_installs_nothing_on_the_request_path(edge, telemetry):
    client, bus = await edge(with_telemetry(**telemetry))
    app = client.server.app
    assert observe.TRACING not in app and observe.METRICS not in app
    assert "request" not in vars(bus) and "stream" not in vars(bus)  # Bus.observe not called
    assert len(app.middlewares) == 1  # the front one only: no observe middleware (nor auth)
    resp = await client.post("/api/request/demo/echo", json={})
    assert resp.status == 200
    assert (await client.get("/metrics")).status == 404


async def test_a_sampled_call_makes_server_and_producer_spans_and_exports_them(edge, sink):
    client, bus = await edge(with_telemetry(sampling=1.0))
    resp = await client.post("/api/request/demo/echo", json={"a": 1})
    assert resp.status == 200
    await client.server.app[observe.TRACING].close()  # flushes the batch onto the "bus"
    ((bucket, data),) = sink.published
    trace_id = resp.headers["X-Trace-Id"]
    assert bucket == trace_export.bucket(trace_id, resp.headers["X-Request-Id"])
    spans = {s.kind: s for s in decode_spans([data])}
    assert set(spans) == {SERVER, PRODUCER}
    server, producer = spans[SERVER], spans[PRODUCER]
    assert producer.parent_id == server.span_id
    assert server.start <= producer.start and producer.end <= server.end
    assert server.service == "busgate-edge"
    # the envelope carries the PRODUCER span's context, sampled
    (req,) = sent(bus)
    assert req.traceparent == f"00-{trace_id}-{producer.span_id}-01"


async def test_an_error_reply_marks_the_producer_span_failed(edge, sink):
    """The reply's error is set on the span before it ends (an ended span is final)."""
    from busgate.contracts.errors import UpstreamError
    from busgate.contracts.wire import Reply

    async def failing(req: Request, responder: Responder) -> None:
        error = UpstreamError("the runner fell over")
        await responder.reply(Reply(id=req.id, status=error.status, error=error.to_wire()))

    client, _ = await edge(with_telemetry(sampling=1.0), failing)
    resp = await client.post("/api/request/demo/echo", json={})
    assert resp.status == 502
    await client.server.app[observe.TRACING].close()
    spans = {s.kind: s for _, data in sink.published for s in decode_spans([data])}
    assert spans[PRODUCER].error and spans[PRODUCER].attributes["error.type"] == "upstream_error"


async def test_the_client_sampling_decision_is_followed(edge, sink):
    config = msgspec.structs.replace(
        with_telemetry(sampling=1.0), gateway=make_config(accept_trace=True).gateway
    )
    client, bus = await edge(config)
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"
    resp = await client.post(
        "/api/request/demo/echo", json={}, headers={"traceparent": parent + "-00"}
    )
    assert resp.status == 200
    (req,) = sent(bus)
    assert req.traceparent.startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    assert req.traceparent.endswith("-00")  # no node after the edge records it either
    resp = await client.post(
        "/api/request/demo/echo", json={}, headers={"traceparent": parent + "-01"}
    )
    await client.server.app[observe.TRACING].close()
    spans = {s.kind: s for _, data in sink.published for s in decode_spans([data])}
    assert spans[SERVER].trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert spans[SERVER].parent_id == "00f067aa0ba902b7"  # the client's span
    assert len(sink.published) == 1  # only the sampled call


async def test_unsampled_calls_make_no_span_and_say_so_downstream(edge, sink, monkeypatch):
    started: list[str] = []
    real_start = observe.tr.Tracing.start

    def counting(self, name, *args, **kwargs):
        started.append(name)
        return real_start(self, name, *args, **kwargs)

    monkeypatch.setattr(observe.tr.Tracing, "start", counting)
    client, bus = await edge(with_telemetry(sampling=1e-12))
    for _ in range(20):
        assert (await client.post("/api/request/demo/echo", json={})).status == 200
    assert started == []
    assert all(req.traceparent.endswith("-00") for req in sent(bus))
    await client.server.app[observe.TRACING].close()
    assert sink.published == []


async def test_json_logs_carry_the_call_ids(edge, monkeypatch):
    monkeypatch.setattr(calllog, "enabled", True)
    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Capture()
    handler.setFormatter(calllog.JsonFormatter())
    logger = logging.getLogger("tests.observe")
    logger.addHandler(handler)

    async def logging_echo(req: Request, responder: Responder) -> None:
        logger.warning("handling %s", req.path)  # runs in the call's context (memory bus)
        await echo(req, responder)

    try:
        client, _ = await edge(make_config(), logging_echo)
        resp = await client.post("/api/request/demo/echo", json={})
    finally:
        logger.removeHandler(handler)
    (line,) = lines
    entry = json.loads(line)
    assert entry["message"] == "handling echo"
    assert entry["request_id"] == resp.headers["X-Request-Id"]
    assert entry["trace_id"] == resp.headers["X-Trace-Id"]
    assert entry["level"] == "WARNING"
