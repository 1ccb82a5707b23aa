"""Finished spans to an OTLP/HTTP endpoint, with OpenTelemetry's official exporter.

The request path records lean spans (``bus.spans``); turning them into the SDK's
``ReadableSpan`` and into OTLP protobuf costs far more than recording them (about 60-160 µs a
span here), so none of it happens on the event loop: :meth:`OtlpExporter.on_end` appends to a
queue, and a thread of its own converts and posts in batches, like the SDK's
``BatchSpanProcessor`` does (same defaults: up to 512 spans a post, every 5 s or sooner when
a batch is full, 2048 queued at most -- more are dropped and counted).
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from busgate.bus.spans import CONSUMER_LIKE, ERROR, Row, expand

log = logging.getLogger("busgate.tracing")

MAX_QUEUE = 2048
MAX_BATCH = 512
DELAY = 5.0
"""Seconds between posts when batches do not fill up."""


def readable(rows: Iterable[Row], resource: Any, scope: Any) -> list[Any]:
    """The SDK's ``ReadableSpan`` for each lean span (what the OTLP exporter takes)."""
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

    sampled = TraceFlags(TraceFlags.SAMPLED)
    found = []
    for row in (each for recorded in rows for each in expand(recorded)):
        trace, span_id, parent_id, name, kind, start, end, attributes, code, message = row[:10]
        events, links = row[10:12]
        trace_id = int(trace, 16)
        context = SpanContext(trace_id, int(span_id, 16), False, sampled)
        parent = None
        if parent_id:
            # The parent is in another process for spans that take a call or message in.
            parent = SpanContext(trace_id, int(parent_id, 16), kind in CONSUMER_LIKE, sampled)
        status = (
            Status(StatusCode.ERROR, message or None) if code == ERROR else Status(StatusCode(code))
        )
        found.append(
            ReadableSpan(
                name,
                context=context,
                parent=parent,
                resource=resource,
                attributes=attributes,
                events=[Event(what, values, timestamp=at) for what, at, values in events],
                links=[
                    Link(SpanContext(int(t, 16), int(s, 16), True, sampled), values)
                    for t, s, values in links
                ],
                kind=SpanKind(kind - 1),  # the API counts from INTERNAL = 0
                status=status,
                start_time=start,
                end_time=end,
                instrumentation_scope=scope,
            )
        )
    return found


class OtlpExporter:
    """Queues finished spans; a daemon thread converts and posts them (see above)."""

    def __init__(self, endpoint: str, service: str, node: str) -> None:
        self.endpoint = endpoint
        self.service = service
        self.node = node
        self._queue: collections.deque[Row] = collections.deque()
        self._wake = threading.Event()
        self._stopping = False
        self.dropped = 0
        """Spans lost because the queue was full (the endpoint too slow or away)."""
        self._thread = threading.Thread(target=self._run, name="busgate-otlp", daemon=True)
        self._thread.start()

    def on_end(self, span: Row) -> None:
        queue = self._queue
        if len(queue) >= MAX_QUEUE:
            self.dropped += 1
            return
        queue.append(span)
        if len(queue) == MAX_BATCH:
            self._wake.set()

    def _run(self) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        exporter = OTLPSpanExporter(endpoint=self.endpoint, timeout=5)
        resource = Resource.create({"service.name": self.service, "service.instance.id": self.node})
        scope = InstrumentationScope("busgate")
        try:
            while True:
                self._wake.wait(DELAY)
                self._wake.clear()
                stopping = self._stopping
                while self._queue:
                    self._post(exporter, self._take(), resource, scope)
                if stopping:
                    return
        finally:
            exporter.shutdown()  # type: ignore[no-untyped-call]

    def _take(self) -> Sequence[Row]:
        queue = self._queue
        return [queue.popleft() for _ in range(min(MAX_BATCH, len(queue)))]

    def _post(self, exporter: Any, spans: Sequence[Row], resource: Any, scope: Any) -> None:
        try:
            exporter.export(readable(spans, resource, scope))
        except Exception:  # the exporter logs its own failures; never kill the thread
            log.exception("OTLP export failed")

    def flush(self) -> None:
        """Post what is queued now (tests; the thread does it on its own otherwise)."""
        self._wake.set()

    def close(self, timeout: float = 10.0) -> None:
        """Post what is queued, then stop (blocks: call it off the event loop)."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
