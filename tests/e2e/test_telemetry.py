"""Tracing and metrics across real processes, on both buses: ``busgate dev`` (edge, adapter and
runner as separate processes, telemetry on by default) exporting to a real OTLP/HTTP receiver
in this test, ``busgate trace`` reading the spans back from the bus, and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from prometheus_client.parser import text_string_to_metric_families

from busgate.brokers import free_port
from tests.stack import dev_stack

pytestmark = pytest.mark.e2e

SERVER, CLIENT = Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT
PRODUCER, CONSUMER = Span.SPAN_KIND_PRODUCER, Span.SPAN_KIND_CONSUMER


class Received:
    """One span as the receiver decoded it, with its resource's service attributes."""

    def __init__(self, span: Span, resource: dict[str, Any]) -> None:
        self.span = span
        self.service = resource.get("service.name")
        self.instance = resource.get("service.instance.id")
        self.trace_id = span.trace_id.hex()
        self.span_id = span.span_id.hex()
        self.parent_id = span.parent_span_id.hex()
        self.attributes = {a.key: _value(a.value) for a in span.attributes}


def _value(value: Any) -> Any:
    which = value.WhichOneof("value")
    return getattr(value, which) if which else None


class OtlpReceiver(ThreadingHTTPServer):
    """A real OTLP/HTTP endpoint: ``POST /v1/traces`` with a protobuf
    ``ExportTraceServiceRequest``, decoded with ``opentelemetry-proto``."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", free_port()), _OtlpHandler)
        self.spans: list[Received] = []
        self.changed = threading.Condition()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/traces"

    def add(self, message: ExportTraceServiceRequest) -> None:
        with self.changed:
            for resource_spans in message.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    self.spans.extend(Received(s, resource) for s in scope.spans)
            self.changed.notify_all()

    def wait_until(
        self, done: Callable[[list[Received]], bool], timeout: float = 20
    ) -> list[Received]:
        """All spans received, once ``done(spans)`` holds (woken by each export)."""
        with self.changed:
            if not self.changed.wait_for(lambda: done(self.spans), timeout):
                raise AssertionError(f"not received: {[s.span.name for s in self.spans]}")
            return list(self.spans)

    def wait_for(
        self, trace_id: str, done: Callable[[list[Received]], bool], timeout: float = 20
    ) -> list[Received]:
        """The spans of ``trace_id`` once ``done(spans)`` holds (woken by each export)."""

        def spans() -> list[Received]:
            return [s for s in self.spans if s.trace_id == trace_id]

        with self.changed:
            if not self.changed.wait_for(lambda: done(spans()), timeout):
                raise AssertionError(
                    f"trace {trace_id} incomplete: {[s.span.name for s in spans()]}"
                )
            return spans()


class _OtlpHandler(BaseHTTPRequestHandler):
    server: OtlpReceiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            import gzip

            body = gzip.decompress(body)
        if self.path != "/v1/traces":
            self.send_response(404)
            self.end_headers()
            return
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        self.server.add(message)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    yield receiver
    receiver.shutdown()
    receiver.server_close()


@pytest.fixture(scope="module", params=["nats", "kafka"])
def traced(request, otlp):
    """The dev stack with its default telemetry, plus an OTLP endpoint and two channels only
    the metrics and follow tests use (so their counts are exact)."""
    request.applymarker(getattr(pytest.mark, request.param))
    env = {
        "BUSGATE__TELEMETRY__OTLP_ENDPOINT": otlp.endpoint,
        "BUSGATE__CHANNELS__COUNTED__SYSTEM": "demo",
        "BUSGATE__CHANNELS__FOLLOWED__SYSTEM": "demo",
        "BUSGATE__CHANNELS__HURRIED__SYSTEM": "demo",
        "BUSGATE__CHANNELS__HURRIED__TIMEOUT": "0.5",
    }
    with dev_stack(request.param, env=env) as running:
        yield running


def kinds(*wanted: int) -> Callable[[list[Received]], bool]:
    return lambda spans: all(any(s.span.kind == k for s in spans) for k in wanted)


def one(spans: list[Received], kind: int) -> Received:
    (found,) = [s for s in spans if s.span.kind == kind]
    return found


async def test_one_trace_across_edge_and_adapter_processes(traced, otlp, http):
    async with http.post(f"{traced.url}/api/request/demo/meta", json={}) as resp:
        assert resp.status == 200
        meta = await resp.json()
        trace_id = resp.headers["X-Trace-Id"]
    spans = otlp.wait_for(trace_id, kinds(SERVER, PRODUCER, CONSUMER, CLIENT))
    server, producer = one(spans, SERVER), one(spans, PRODUCER)
    consumer, client = one(spans, CONSUMER), one(spans, CLIENT)

    # parent/child links, across the process boundary
    assert server.parent_id == ""
    assert producer.parent_id == server.span_id
    assert consumer.parent_id == producer.span_id
    assert client.parent_id == consumer.span_id
    # two processes, each with its own service name
    assert {server.service, producer.service} == {"busgate-edge"}
    assert {consumer.service, client.service} == {"busgate-adapter"}
    assert server.instance != consumer.instance
    # the runner received the CLIENT span's context
    assert meta["traceparent"] == f"00-{trace_id}-{client.span_id}-01"
    assert meta["traceId"] == trace_id

    assert server.attributes["http.route"] == "/api/request/{channel}/{path}"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["busgate.request_id"] == resp.headers["X-Request-Id"]
    for span in (producer, consumer):
        assert span.attributes["messaging.system"] == traced.bus
        assert span.attributes["messaging.destination.name"] == "busgate.req.demo"
        assert span.attributes["messaging.message.id"] == resp.headers["X-Request-Id"]
    assert client.attributes["http.response.status_code"] == 200


async def test_a_failed_call_marks_its_spans_with_the_error_code(traced, otlp, http):
    url = f"{traced.url}/api/request/demo/fail"
    async with http.post(url, json={"status": 500}) as resp:
        assert resp.status == 502
        trace_id = resp.headers["X-Trace-Id"]
    spans = otlp.wait_for(trace_id, kinds(SERVER, PRODUCER, CONSUMER, CLIENT))
    server, client = one(spans, SERVER), one(spans, CLIENT)
    assert server.span.status.code == Status.STATUS_CODE_ERROR
    assert server.attributes["error.type"] == "upstream_error"
    assert server.attributes["http.response.status_code"] == 502
    assert client.span.status.code == Status.STATUS_CODE_ERROR
    assert client.attributes["http.response.status_code"] == 500
    assert one(spans, CONSUMER).span.status.code == Status.STATUS_CODE_ERROR


async def test_an_error_answer_without_a_runner_failure_marks_the_consumer_span(traced, otlp, http):
    """The runner answers 200, but its answer is larger than the bus carries: the adapter
    answers ``reply_too_large`` instead, and its CONSUMER span says so (the CLIENT one not)."""
    url = f"{traced.url}/api/request/demo/blob"
    async with http.post(url, json={"bytes": 2_000_000}) as resp:
        assert resp.status == 502
        assert (await resp.json())["error"]["code"] == "reply_too_large"
        trace_id = resp.headers["X-Trace-Id"]
    spans = otlp.wait_for(trace_id, kinds(SERVER, PRODUCER, CONSUMER, CLIENT))
    client, consumer = one(spans, CLIENT), one(spans, CONSUMER)
    assert client.span.status.code != Status.STATUS_CODE_ERROR
    assert client.attributes["http.response.status_code"] == 200
    assert consumer.span.status.code == Status.STATUS_CODE_ERROR
    assert consumer.attributes["error.type"] == "reply_too_large"


async def test_a_command_execution_links_to_the_call_that_issued_it(traced, otlp, http):
    """Each attempt of a command is a CONSUMER span in a trace of its own, linked to the
    PRODUCER span of the call that issued it; the runner continues the attempt's trace."""
    url = f"{traced.url}/api/command/orders/traced"
    async with http.post(url, json={"fail_until": 2}) as resp:  # attempt 1 fails (500)
        assert resp.status == 202
        command_id = (await resp.json())["commandId"]
        trace_id = resp.headers["X-Trace-Id"]
    issued = otlp.wait_for(trace_id, kinds(SERVER, PRODUCER))
    server, producer = one(issued, SERVER), one(issued, PRODUCER)
    assert producer.parent_id == server.span_id
    assert producer.attributes["messaging.message.id"] == command_id
    assert producer.attributes["messaging.destination.name"] == "busgate.cmd.demo"

    def attempts(spans: list[Received]) -> list[Received]:
        return [
            s
            for s in spans
            if s.span.kind == CONSUMER and s.attributes.get("busgate.command_id") == command_id
        ]

    spans = otlp.wait_until(lambda spans: len(attempts(spans)) == 2)
    first, second = sorted(attempts(spans), key=lambda s: s.attributes["busgate.attempt"])
    for consumer in (first, second):
        assert consumer.trace_id != trace_id and consumer.parent_id == ""
        (link,) = consumer.span.links
        assert (link.trace_id.hex(), link.span_id.hex()) == (trace_id, producer.span_id)
        assert consumer.service == "busgate-adapter"
    assert first.span.status.code == Status.STATUS_CODE_ERROR
    assert first.attributes["error.type"] == "upstream_error"
    assert second.span.status.code != Status.STATUS_CODE_ERROR
    # the runner call of the second attempt: a CLIENT span in its trace, whose id it got
    client = one(otlp.wait_for(second.trace_id, kinds(CONSUMER, CLIENT)), CLIENT)
    assert client.parent_id == second.span_id
    async with http.get(f"{traced.runner}/calls") as resp:
        made = [c for c in await resp.json() if c["commandId"] == command_id]
    assert [c["attempt"] for c in made] == [1, 2]
    assert made[1]["traceparent"] == f"00-{second.trace_id}-{client.span_id}-01"
    # busgate trace: the command's attempts by its id, each linked to the issuing call ...
    lines = trace_cli(traced, command_id)
    assert sum(f"linked to trace {trace_id} span {producer.span_id}" in x for x in lines) == 2
    assert "incomplete" not in "\n".join(lines), lines
    # ... and the call by its id, the command's publish in it
    lines = trace_cli(traced, server.attributes["busgate.request_id"])
    assert any("publish command" in x for x in lines) and "incomplete" not in "\n".join(lines)


async def test_an_ad_hoc_message_gets_a_producer_span_and_carries_its_context(traced, otlp, http):
    url = f"{traced.url}/api/send/events/orders.created/42"
    received: list[Any] = []
    if traced.bus == "nats":  # what the message carried, read off the bus
        import nats

        nc = await nats.connect(traced.parts["bus"])
        sub = await nc.subscribe("orders.created", max_msgs=1)
        await nc.flush()
    try:
        async with http.post(url, data=b"hello", headers={"content-type": "text/plain"}) as resp:
            assert resp.status == 202, await resp.text()
            trace_id = resp.headers["X-Trace-Id"]
        if traced.bus == "nats":
            received.append(await sub.next_msg(timeout=10))
    finally:
        if traced.bus == "nats":
            await nc.close()
    spans = otlp.wait_for(trace_id, kinds(SERVER, PRODUCER))
    server, producer = one(spans, SERVER), one(spans, PRODUCER)
    assert producer.parent_id == server.span_id
    assert producer.attributes["messaging.destination.name"] == "orders.created"
    assert producer.attributes["messaging.system"] == traced.bus
    assert producer.attributes["busgate.kind"] == "message"
    if received:
        assert received[0].headers["traceparent"] == f"00-{trace_id}-{producer.span_id}-01"


_ROW = re.compile(r"^  (\w+)\s+(.*?)\s+(-?\d+\.\d)\s+(-?\d+\.\d) ms")
_HEAD = re.compile(r"^trace ([0-9a-f]{32})  (\S+) (\S+)  (\d+)  (\d+\.\d) ms$")


def trace_cli(stack, ident: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-m", "busgate", "trace", ident, "--bus", stack.parts["bus"]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


async def test_busgate_trace_prints_every_hop_within_the_total(traced, http):
    async with http.post(f"{traced.url}/api/request/demo/sleep", json={"ms": 40}) as resp:
        assert resp.status == 200
        request_id, trace_id = resp.headers["X-Request-Id"], resp.headers["X-Trace-Id"]
    lines = trace_cli(traced, request_id)
    head = _HEAD.match(lines[0])
    assert head, lines
    assert head.group(1) == trace_id
    assert (head.group(2), head.group(3), head.group(4)) == (
        "POST",
        "/api/request/demo/sleep",
        "200",
    )
    total = float(head.group(5))
    rows = [
        (m.group(1), m.group(2), float(m.group(3)), float(m.group(4)))
        for line in lines[1:]
        if (m := _ROW.match(line))
    ]
    assert [who for who, *_ in rows] == ["edge", "bus", "adapter", "runner", "bus"], lines
    assert "incomplete" not in "\n".join(lines)
    for who, _, offset, duration in rows:
        assert offset >= 0 and duration >= 0, (who, lines)
        assert offset + duration <= total + 0.1, (who, lines)  # 0.1: printed rounding
    runner = rows[3]
    assert runner[3] >= 40.0  # the runner slept 40 ms
    assert rows[0][3] == total
    # the same waterfall by trace id
    assert trace_cli(traced, trace_id)[0] == lines[0]


async def test_the_adapter_spans_travel_in_its_reply_and_go_out_with_the_edge_ones(traced, http):
    """One bus message per call: the adapter returns its spans in the Reply, and the edge
    publishes them inside its own batch of the call (``bus.trace_export``)."""
    from busgate.bus.spans import decode_batch
    from busgate.bus.trace_export import read_call

    async with http.post(f"{traced.url}/api/request/demo/echo", json={"a": 1}) as resp:
        assert resp.status == 200
        trace_id = resp.headers["X-Trace-Id"]
    lines = await asyncio.to_thread(trace_cli, traced, trace_id)  # waits until complete
    assert "incomplete" not in "\n".join(lines), lines
    batches = [
        decode_batch(data)
        for data in await read_call(traced.parts["bus"], "busgate", trace_id=trace_id)
    ]
    assert {b.service for b in batches} == {"busgate-edge"}, (lines, batches)
    # a message holds its bucket's calls (bus.trace_export); this call's adapter record is
    # in the edge's PRODUCER child (bus.spans.Served), read back as the adapter's batch
    # and the edge's SERVER span is a call's record (bus.spans.Handled), its only span
    assert not [s for b in batches for s in b.spans if s.trace_id == trace_id]
    (server,) = [c for b in batches for c in b.calls if c.trace_id == trace_id]
    (producer,) = server.children
    assert producer.kind == PRODUCER and producer.served is not None
    carried = [b for b in batches for b in b.all() if b.service == "busgate-adapter"]
    carried = [b for b in carried if any(s.trace_id == trace_id for s in b.spans)]
    assert [(b.service, len(b.spans)) for b in carried] == [("busgate-adapter", 1)]
    # the CLIENT span is recorded inside the CONSUMER span's row (bus.spans.Child)
    assert sorted(s.kind for span in carried[0].spans for s in span.family()) == [CLIENT, CONSUMER]


async def test_calls_share_span_messages_and_each_is_traced_alone(traced, http):
    """A flush goes out as a message per bucket, not per call: forty calls at once make
    fewer messages than calls, and ``busgate trace`` shows one call out of its message."""
    from busgate.bus.spans import decode_batch
    from busgate.bus.trace_export import read_call

    async def call(i: int) -> tuple[str, str]:
        async with http.post(f"{traced.url}/api/request/demo/echo", json={"i": i}) as resp:
            assert resp.status == 200
            return resp.headers["X-Request-Id"], resp.headers["X-Trace-Id"]

    calls = await asyncio.gather(*(call(i) for i in range(40)))
    request_id, trace_id = calls[7]
    lines = await asyncio.to_thread(trace_cli, traced, request_id)
    assert _HEAD.match(lines[0]) and _HEAD.match(lines[0]).group(1) == trace_id, lines
    rows = [m.group(1) for line in lines[1:] if (m := _ROW.match(line))]
    assert rows == ["edge", "bus", "adapter", "runner", "bus"], lines
    # every call's spans are on the bus, in fewer messages than calls
    holding: set[bytes] = set()
    for rid, tid in calls:
        for _ in range(50):  # the edge flushes every 0.2 s
            found = await read_call(traced.parts["bus"], "busgate", trace_id=tid)
            spans = [s for data in found for b in decode_batch(data).all() for s in b.spans]
            if any(s.attributes.get("busgate.request_id") == rid for s in spans):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"no span of {rid} on the bus")
        holding.update(found)
    assert len(holding) < len(calls)


async def test_a_reply_too_late_for_its_edge_leaves_the_adapter_spans_on_the_bus(traced, http):
    """The edge answers 504 at the deadline and drops the late reply; the adapter, seeing the
    deadline at hand, publishes its spans itself rather than in that reply."""
    async with http.post(f"{traced.url}/api/request/hurried/sleep", json={"ms": 1500}) as resp:
        assert resp.status == 504
        request_id = resp.headers["X-Request-Id"]
    lines = await asyncio.to_thread(trace_cli, traced, request_id)
    text = "\n".join(lines)
    assert "incomplete" not in text and "no adapter span" not in text, lines
    assert any(line.lstrip().startswith("adapter") for line in lines), lines


async def test_a_bus_native_runner_call_is_a_span_in_the_trace(traced, otlp, http):
    """The kit runner (``type = "bus"``, no adapter) continues the envelope's context: its
    CONSUMER span is the PRODUCER's child, the saga gets its context, it goes out over
    OTLP and onto the bus, and ``busgate trace`` shows the runner hop."""
    async with http.post(f"{traced.url}/api/request/native/meta", json={}) as resp:
        assert resp.status == 200
        meta = await resp.json()
        request_id, trace_id = resp.headers["X-Request-Id"], resp.headers["X-Trace-Id"]
    spans = otlp.wait_for(trace_id, kinds(SERVER, PRODUCER, CONSUMER))
    producer, consumer = one(spans, PRODUCER), one(spans, CONSUMER)
    assert consumer.parent_id == producer.span_id
    assert consumer.service == "busgate-runner"
    assert consumer.attributes["busgate.saga"] == "meta"
    assert meta["traceparent"] == f"00-{trace_id}-{consumer.span_id}-01"
    lines = await asyncio.to_thread(trace_cli, traced, request_id)
    rows = [m.group(1) for line in lines[1:] if (m := _ROW.match(line))]
    assert rows == ["edge", "bus", "runner", "bus"], lines
    assert "saga meta" in "\n".join(lines) and "incomplete" not in "\n".join(lines)
    # its span came back in the Reply: one message, published by the edge
    from busgate.bus.spans import decode_batch
    from busgate.bus.trace_export import read_call

    found = await read_call(traced.parts["bus"], "busgate", trace_id=trace_id)
    batches = [decode_batch(data) for data in found]
    assert {b.service for b in batches} == {"busgate-edge"}
    assert [inner.service for b in batches for inner in b.more] == ["busgate-runner"]


async def test_a_failed_bus_native_saga_marks_its_span(traced, otlp, http):
    async with http.post(f"{traced.url}/api/request/native/fail", json={"kind": "conflict"}) as r:
        assert r.status == 409, await r.text()
        trace_id = r.headers["X-Trace-Id"]
    consumer = one(otlp.wait_for(trace_id, kinds(SERVER, PRODUCER, CONSUMER)), CONSUMER)
    assert consumer.span.status.code == Status.STATUS_CODE_ERROR
    assert consumer.attributes["error.type"] == "conflict"


async def test_a_bus_native_stream_is_a_span_in_the_trace(traced, otlp, http):
    async with http.post(f"{traced.url}/api/stream/native/count", json={"to": 2}) as resp:
        assert resp.status == 200, await resp.text()
        await resp.read()
        trace_id = resp.headers["X-Trace-Id"]
    spans = otlp.wait_for(trace_id, kinds(SERVER, PRODUCER, CONSUMER))
    consumer = one(spans, CONSUMER)
    assert consumer.parent_id == one(spans, PRODUCER).span_id
    assert consumer.attributes["busgate.kind"] == "stream"
    lines = await asyncio.to_thread(trace_cli, traced, trace_id)
    assert "saga count" in "\n".join(lines) and "incomplete" not in "\n".join(lines), lines


def edge_metrics(text: str) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


async def test_metrics_count_calls_exactly_by_status(traced, http):
    base = f"{traced.url}/api/request/counted"
    for _ in range(3):
        async with http.post(f"{base}/echo", json={"a": 1}) as resp:
            assert resp.status == 200
    for _ in range(2):
        async with http.post(f"{base}/fail", json={"status": 500}) as resp:
            assert resp.status == 502
    async with http.post(f"{base}/nosuch", json={}) as resp:
        assert resp.status == 404
    async with http.get(f"{traced.url}/api/request/secure/meta") as resp:
        assert resp.status == 401
    async with http.get(f"{traced.url}/metrics") as resp:
        assert resp.status == 200
        samples = edge_metrics(await resp.text())
    calls = {
        s.labels["status"]: s.value
        for s in samples["busgate_edge_calls_total"]
        if s.labels["channel"] == "counted"
    }
    assert calls == {"200": 3.0, "502": 2.0, "404": 1.0}
    assert {
        s.labels["system"]
        for s in samples["busgate_edge_calls_total"]
        if s.labels["channel"] == "counted"
    } == {"demo"}
    (count,) = [
        s.value
        for s in samples["busgate_edge_call_seconds_count"]
        if s.labels["channel"] == "counted"
    ]
    assert count == 6.0
    secure = [
        s.value
        for s in samples["busgate_auth_failures_total"]
        if s.labels["reason"] == "missing_token"
    ]
    assert secure == [1.0]
    assert samples["busgate_bus_connected"][0].value == 1.0
    assert samples["busgate_edge_in_flight"][0].value == 0.0
    adapters = {s.labels["system"]: s.value for s in samples["busgate_adapters"]}
    assert adapters["demo"] == 1.0
    assert "busgate_sessions" in samples and "busgate_edge_open_streams" in samples
    # the adapter's own /metrics (--metrics-listen, as busgate dev starts it)
    async with http.get(traced.parts["metrics"]) as resp:
        adapter = edge_metrics(await resp.text())
    runner = {s.labels["status"]: s.value for s in adapter["busgate_runner_calls_total"]}
    assert runner.get("500", 0) >= 2 and runner.get("404", 0) >= 1
    assert adapter["busgate_adapter_in_flight"][0].value == 0.0
    assert adapter["busgate_bus_connected"][0].value == 1.0


async def test_follow_prints_calls_of_one_channel_as_they_end(traced, http):
    proc = subprocess.Popen(  # noqa: ASYNC220 - reads its output line by line, below
        [
            sys.executable,
            "-m",
            "busgate",
            "trace",
            "--follow",
            "--channel",
            "followed",
            "--bus",
            traced.parts["bus"],
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None and proc.stdout is not None
        for line in proc.stderr:  # until subscribed: calls from then on are printed
            if "following calls" in line:
                break
        ids = []
        for path in ("echo", "nosuch"):
            async with http.post(f"{traced.url}/api/request/followed/{path}", json={}) as resp:
                ids.append((resp.headers["X-Request-Id"], resp.status))
        async with http.post(f"{traced.url}/api/request/demo/echo", json={}) as resp:
            assert resp.status == 200  # another channel: not printed
        lines = [proc.stdout.readline(), proc.stdout.readline()]
    finally:
        proc.terminate()
        proc.communicate(timeout=10)  # also closes its pipes
    for request_id, status in ids:
        (line,) = [line for line in lines if f"  {request_id}  " in line]
        assert f"  {status}  " in line and " ms  trace " in line, line
        assert "/api/request/followed/" in line


@pytest.mark.nats
async def test_dev_passes_the_json_log_format_on_to_its_processes(http):
    with dev_stack("nats", options=("--log-format", "json")) as stack:
        url = f"{stack.url}/api/request/demo/blob"
        async with http.post(url, json={"bytes": 2_000_000}) as resp:  # the adapter warns
            assert resp.status == 502
            request_id, trace_id = resp.headers["X-Request-Id"], resp.headers["X-Trace-Id"]

        # The adapter logged the warning before it answered; a thread reads its output.
        def logged(output: list[str]) -> bool:
            return any(request_id in line for line in output)

        assert await asyncio.to_thread(stack.wait_for_output, logged), stack.output
        (entry,) = [json.loads(line) for line in stack.output if request_id in line]
    assert entry["level"] == "WARNING" and entry["logger"].startswith("busgate")
    assert (entry["request_id"], entry["trace_id"]) == (request_id, trace_id)
    (started,) = [
        line for line in stack.output if '"busgate.adapter"' in line and " serving " in line
    ]
    assert json.loads(started)["level"] == "INFO"  # not the call's: no ids
    assert json.loads(started)["request_id"] is None
