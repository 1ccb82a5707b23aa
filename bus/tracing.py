"""Spans of the calls that cross the bus: one tracer per process, the context in the envelope.

Edge and adapters both trace, so the shared part lives here, in ``bus`` (which both import):
the tracer with its exporters (OTLP over HTTP, ``bus.otlp``, and the bus itself,
``bus.trace_export``), and the W3C ``traceparent`` helpers that carry a span's context in
``Request.traceparent``. Spans are the lean ones of ``bus.spans`` (why: see there), with
OpenTelemetry's data model; the OpenTelemetry SDK is only loaded to export over OTLP.

Off means off. Whether a call is traced is decided once, at the edge (``sampling``, or the
client's sampled flag), and travels as the ``traceparent`` flags; a node starts a span only
for a sampled ``traceparent``, so an untraced call makes no span object anywhere, and with
``sampling = 0`` no tracer exists and the hooks are not installed at all (``Bus.observe``,
``RpcClient.observe``, the edge's observe middleware).

Spans are started with explicit parents (``parent=traceparent``) rather than through a
context variable: the parent is always the envelope's ``traceparent``. A parent that is an
open span of this process (the edge's SERVER span for its PRODUCER span, the adapter's
CONSUMER span for its CLIENT span) is looked up rather than parsed again (``Tracing.open``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

from busgate.bus.naming import Names
from busgate.bus.spans import (
    ERROR,
    ERROR_TYPE_KEY,
    REQUEST_ID_KEY,
    UNSET,
    Attributes,
    Handling,
    Kind,
    Row,
    Serving,
    Span,
    new_span_id,
    random_hex,
)
from busgate.contracts.config import Telemetry
from busgate.contracts.wire import Request

if TYPE_CHECKING:
    from busgate.bus.base import Bus
    from busgate.bus.trace_export import BusSpanProcessor, TraceSink

__all__ = [
    "ERROR",
    "ERROR_CODE",
    "REQUEST_ID",
    "UNSET",
    "Handling",
    "Kind",
    "Messaging",
    "Serving",
    "Span",
    "Tracing",
    "fail",
    "is_sampled",
    "new_span_id",
]

log = logging.getLogger("busgate.tracing")

REQUEST_ID = REQUEST_ID_KEY
"""Attribute on every busgate span: ``busgate trace REQUEST_ID`` and the bus export key."""
REPLY_MARGIN = 0.25
"""Seconds before a call's deadline after which its answering node no longer puts its spans
in the Reply (``Request.spans_in_reply``) but publishes them itself: a reply that reaches
the edge after the deadline is dropped there, and its spans with it."""
ERROR_CODE = ERROR_TYPE_KEY
"""The busgate error code of a failed call (OpenTelemetry's ``error.type``)."""

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}").fullmatch
_NO_TRACE, _NO_SPAN = "0" * 32, "0" * 16
MAX_OPEN = 65_536
"""Open spans whose context :attr:`Tracing.open` lists at most (it is a cache: a span that
never ends must not grow it)."""


class Exporter(Protocol):
    """Where finished spans go (called on the event loop, as each span ends)."""

    def on_end(self, span: Row) -> None: ...


def is_sampled(traceparent: str) -> bool:
    """Whether a ``traceparent`` asks for recording (its flags' lowest bit)."""
    return len(traceparent) == 55 and traceparent[54] in "13579bdf"


def ids(traceparent: str) -> tuple[str, str] | None:
    """(trace id, span id) of a W3C ``traceparent`` (lowercase), or None when it is not one.

    One compiled ``fullmatch`` (0.45 µs here; checking positions and the character set in
    Python took 0.8)."""
    m = _TRACEPARENT(traceparent)
    if m is None or m[1] == "ff":
        return None
    trace_id, span_id = m[2], m[3]
    if trace_id == _NO_TRACE or span_id == _NO_SPAN:
        return None
    return trace_id, span_id


def new_trace_id() -> str:
    return random_hex(16)


def _continued(parent: str) -> tuple[str, str]:
    """(trace id, parent span id) of a span continuing the ``traceparent`` ``parent``: a new
    trace's root when it is empty or not one."""
    found = ids(parent) if parent else None
    return found if found is not None else (new_trace_id(), "")


class Tracing:
    """The tracer of one process (an edge or an adapter) and where its spans go."""

    def __init__(self, telemetry: Telemetry, *, service: str, node: str) -> None:
        self.telemetry = telemetry
        self.sampling = telemetry.sampling
        self.service = service
        self.node = node
        self.exporters: list[Exporter] = []
        if telemetry.otlp_endpoint:
            from busgate.bus.otlp import OtlpExporter

            self.exporters.append(OtlpExporter(telemetry.otlp_endpoint, service, node))
        self._end: Callable[[Row], None] = self._fan_out
        self._record: Callable[[Handling], None] = self._as_row
        self.bus: BusSpanProcessor | None = None
        """The bus export, once started (:meth:`export_to_bus`)."""
        self.open: dict[str, Span | Serving | Handling] = {}
        """``traceparent`` -> this process's open spans whose context was handed out: a
        child of one is not parsed again (0.8-1.4 µs a span, the bench), and a span of fixed
        shape is recorded inside it (``ended_child``)."""
        self._wire()

    def _wire(self) -> None:
        """Spans end straight into the exporter when there is one (a call less per span)."""
        self._end = self.exporters[0].on_end if len(self.exporters) == 1 else self._fan_out
        if self.bus is not None:
            self.bus.also = [e.on_end for e in self.exporters if e is not self.bus]
            self._record = self.bus.on_call

    def _fan_out(self, span: Row) -> None:
        for exporter in self.exporters:
            exporter.on_end(span)

    def _as_row(self, call: Handling) -> None:
        """A call's record ended, without the bus export: its row to the exporters."""
        self._end(call.row())

    async def export_to_bus(self, bus: Bus, url: str) -> None:
        """Also send finished spans onto ``bus`` (``busgate trace`` reads them there)."""
        if not self.telemetry.bus_export:
            return
        from busgate.bus.trace_export import open_sink

        await self.export_to(open_sink(bus, url, self.telemetry))

    async def export_to(self, sink: TraceSink) -> None:
        """Also send finished spans to ``sink`` (a node's connection to the bus)."""
        from busgate.bus.trace_export import BusSpanProcessor

        await sink.start()
        self.bus = BusSpanProcessor(sink, service=self.service, node=self.node)
        self.exporters.append(self.bus)
        self._wire()

    def start(
        self,
        name: str,
        kind: Kind,
        parent: str,
        attributes: Attributes,
        links: Sequence[str] = (),
    ) -> Span:
        """A span whose parent is the span context in ``parent`` (a ``traceparent``), or a
        new trace's root when ``parent`` is empty or invalid. ``links``: ``traceparent``s of
        related spans that are not its parent (a command's issuing call). ``attributes`` is
        the span's from now on."""
        open_span = self.open.get(parent) if parent else None
        if open_span is not None:
            trace_id, parent_id = open_span.trace_id, open_span.span_id
        else:
            trace_id, parent_id = _continued(parent)
        linked: list[tuple[str, str, Attributes]] | None = None
        if links:
            linked = [(ctx[0], ctx[1], {}) for link in links if (ctx := ids(link)) is not None]
        return Span(
            self._end,
            trace_id,
            new_span_id(),
            parent_id,
            name,
            kind,
            attributes,
            linked or None,
            self._open_spans(),
        )

    def handling(self, context: tuple[str, str, str], values: list[Any], listed: str) -> Handling:
        """An HTTP call's SERVER span as a record (:class:`Handling`). ``context``: (trace id,
        span id, parent span id) as the edge's front assigned them; ``values``:
        ``bus.spans.SERVER_KEYS``'; ``listed``: the ``traceparent`` handed out for it, under
        which it is listed in :attr:`open` while it lasts."""
        return Handling(self._record, self._end, context, values, listed, self._open_spans())

    def serving(self, parent: str, values: list[Any], group: str) -> Serving:
        """A CONSUMER span recorded for its Reply (:class:`Serving`), a child of the
        ``traceparent`` ``parent`` (a PRODUCER span of another process)."""
        trace_id, parent_id = _continued(parent)
        return Serving(self._end, trace_id, parent_id, values, group, self._open_spans())

    def _open_spans(self) -> dict[str, Span | Serving | Handling]:
        """:attr:`open`, emptied first when full (a span that never ends must not grow it)."""
        if len(self.open) >= MAX_OPEN:
            self.open.clear()
        return self.open

    async def close(self) -> None:
        """Export what is still buffered, then stop the exporters."""
        from busgate.bus.otlp import OtlpExporter
        from busgate.bus.trace_export import BusSpanProcessor

        for exporter in self.exporters:
            if isinstance(exporter, BusSpanProcessor):
                await exporter.aclose()
            elif isinstance(exporter, OtlpExporter):
                # OTLP's last batch is a blocking HTTP post: not on the event loop.
                await asyncio.to_thread(exporter.close)


class Messaging:
    """The spans of one side of the request destinations (``send``: the edge's PRODUCER,
    ``process``: the adapter's or bus-native runner's CONSUMER), OpenTelemetry's messaging
    conventions. A system's span name and the attributes all its spans share are made once
    (they were built again for every traced call)."""

    def __init__(self, scheme: str, names: Names, operation: Literal["send", "process"]) -> None:
        self.scheme = scheme
        self.names = names
        self.operation = operation
        self.kind = Kind.PRODUCER if operation == "send" else Kind.CONSUMER
        self._made: dict[str, tuple[str, Attributes, str, str]] = {}
        """System -> its span name, the attributes its spans share, its destination and
        consumer group (``process``)."""

    def _of(self, system: str) -> tuple[str, Attributes, str, str]:
        found = self._made.get(system)
        if found is None:
            dest = self.names.request(system)
            shared: Attributes = {
                "messaging.system": self.scheme,
                "messaging.operation.type": self.operation,
                "messaging.destination.name": dest,
                "busgate.system": system,
            }
            group = ""
            if self.operation == "process":
                group = shared["messaging.consumer.group.name"] = self.names.group(system)
            verb = "publish" if self.operation == "send" else "process"
            found = self._made[system] = (f"{dest} {verb}", shared, dest, group)
        return found

    def values(self, req: Request) -> list[Any]:
        """The values of ``req``'s PRODUCER span recorded inside its call's SERVER span
        (``bus.spans.CHILD_KEYS``): a few values instead of a span of its own."""
        found = self._made.get(req.system) or self._of(req.system)  # no call once made
        return [self.scheme, found[2], req.system, req.id, req.kind]

    def serving(self, tracing: Tracing, req: Request) -> Serving:
        """``req``'s CONSUMER span as a :class:`Serving` record, for its Reply."""
        values = self.values(req)
        return tracing.serving(req.traceparent, values, self._made[req.system][3])

    def start(self, tracing: Tracing, req: Request, extra: Attributes | None = None) -> Span:
        """``req``'s span, a child of its ``traceparent`` (the message id is its id)."""
        name, shared, _, _ = self._of(req.system)
        attributes = {
            **shared,
            "messaging.message.id": req.id,
            REQUEST_ID: req.id,
            "busgate.kind": req.kind,
        }
        if extra:
            attributes.update(extra)
        return tracing.start(name, self.kind, req.traceparent, attributes)


def fail(span: Span | Serving, code: str, message: str = "") -> None:
    """Mark ``span`` failed with a busgate error code."""
    span.error(code, message)
