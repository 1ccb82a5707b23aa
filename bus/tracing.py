"""Spans of the calls that cross the bus: one tracer per process, the context in the envelope.

Edge and adapters both trace, so the shared part lives here, in ``bus`` (which both import):
the tracer with its exporters (OTLP over HTTP, and the bus itself, ``bus.trace_export``), and
the W3C ``traceparent`` helpers that carry a span's context in ``Request.traceparent``.

Off means off. Whether a call is traced is decided once, at the edge (``sampling``, or the
client's sampled flag), and travels as the ``traceparent`` flags; a node starts a span only
for a sampled ``traceparent``, so an untraced call makes no span object anywhere (not even a
non-recording one), and with ``sampling = 0`` no tracer exists and the hooks are not
installed at all (``Bus.observe``, ``RpcClient.observe``, the edge's observe middleware).

Spans are started with explicit parents (``parent=traceparent``) rather than through the
OpenTelemetry context (contextvars): the parent is always the envelope's ``traceparent``,
and attaching and detaching a context per span would cost a few µs for nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.util.types import AttributeValue

from busgate.contracts.config import Telemetry

if TYPE_CHECKING:
    from busgate.bus.base import Bus

log = logging.getLogger("busgate.tracing")

REQUEST_ID = "busgate.request_id"
"""Attribute on every busgate span: ``busgate trace REQUEST_ID`` and the bus export key."""
ERROR_CODE = "error.type"
"""The busgate error code of a failed call (OpenTelemetry's ``error.type``)."""

Span = trace.Span
Kind = SpanKind


def is_sampled(traceparent: str) -> bool:
    """Whether a ``traceparent`` asks for recording (its flags' lowest bit)."""
    return len(traceparent) == 55 and traceparent[54] in "13579bdf"


def unsampled(traceparent: str) -> str:
    """The same context with the sampled flag off: the nodes after this one record nothing."""
    return traceparent[:-2] + "00" if len(traceparent) == 55 else traceparent


def parse(traceparent: str) -> SpanContext | None:
    """The span context in a W3C ``traceparent``, or None when it is not one."""
    parts = traceparent.split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16 or len(parts[3]) != 2:
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))


def traceparent_of(span: Span) -> str:
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-01"


def trace_id_of(span: Span) -> str:
    return f"{span.get_span_context().trace_id:032x}"


class Tracing:
    """The tracer of one process (an edge or an adapter) and where its spans go."""

    def __init__(self, telemetry: Telemetry, *, service: str, node: str) -> None:
        self.telemetry = telemetry
        self.sampling = telemetry.sampling
        self.node = node
        self.provider = TracerProvider(
            sampler=ALWAYS_ON,  # the decision is made before a span is started (see above)
            resource=Resource.create({"service.name": service, "service.instance.id": node}),
        )
        self.tracer = self.provider.get_tracer("busgate")
        self._processors: list[SpanProcessor] = []
        if telemetry.otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            self._add(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=telemetry.otlp_endpoint, timeout=5))
            )

    def _add(self, processor: SpanProcessor) -> None:
        self._processors.append(processor)
        self.provider.add_span_processor(processor)

    async def export_to_bus(self, bus: Bus, url: str) -> None:
        """Also send finished spans onto ``bus`` (``busgate trace`` reads them there)."""
        if not self.telemetry.bus_export:
            return
        from busgate.bus.trace_export import BusSpanProcessor, open_sink

        sink = open_sink(bus, url, max_age=self.telemetry.bus_max_age)
        await sink.start()
        self._add(BusSpanProcessor(sink))

    def start(
        self,
        name: str,
        kind: SpanKind,
        parent: str,
        attributes: Mapping[str, AttributeValue],
    ) -> Span:
        """A span whose parent is the span context in ``parent`` (a ``traceparent``), or a
        new trace's root when ``parent`` is empty or invalid."""
        ctx = parse(parent) if parent else None
        context = trace.set_span_in_context(NonRecordingSpan(ctx)) if ctx is not None else None
        return self.tracer.start_span(name, context=context, kind=kind, attributes=attributes)

    async def close(self) -> None:
        """Export what is still buffered, then stop the exporters."""
        from busgate.bus.trace_export import BusSpanProcessor

        for processor in self._processors:
            if isinstance(processor, BusSpanProcessor):
                await processor.aclose()
        # OTLP's last batch is a blocking HTTP post: not on the event loop.
        await asyncio.to_thread(self.provider.shutdown)


def fail(span: Span, code: str, message: str = "") -> None:
    """Mark ``span`` failed with a busgate error code."""
    span.set_attribute(ERROR_CODE, code)
    span.set_status(trace.Status(trace.StatusCode.ERROR, message or code))
