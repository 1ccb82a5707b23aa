"""Lean spans: what a node records per call, and their compact form on the bus.

OpenTelemetry is the model: W3C trace and span ids, span kinds, attributes named by its
semantic conventions, status, events and links. Its SDK's ``Span`` is not what records them
on the request path, because of its cost, measured here (2 cores, opentelemetry-sdk 1.45):
starting and ending one SDK span with six attributes took 37-46 µs, and encoding it as OTLP
protobuf with OpenTelemetry's encoder another 57-80 µs. An edge makes two spans per call and
an adapter two more, so fully traced calls ran at 0.41x of untraced ones in the bench
(CPU per call 1,460 µs against 617). A :class:`Span` here is a slotted object holding the
same data (3-4 µs to start and end, ids and times included), and a finished span travels
as one msgpack array (under 1 µs to encode): traced calls then took 0.81-0.92x of the
CPU of untraced ones (two bench runs on a shared 2-core box, December 2026; about a third
of the rest was nats-server storing each node's span batch per call). The answering node's
spans now travel in its Reply and go out inside the edge's batch (``SpanBatch.more``): one
stored message per call instead of two, which took nats-server's CPU for the spans of a
call from 23 to 15 µs (median of 6 alternating rounds of 20,000 calls' batches); and the
calls of a flush now share a message per bucket of ids. A PRODUCER or CLIENT span is
recorded inside its parent once it ended (:meth:`Span.ended_child`): an edge's two spans of
a call take 425 bytes on the bus instead of 659, and a span object, attribute dict and
export less per node and call. The answering node's CONSUMER span and its runner calls go
one step further (:class:`Serving`, :class:`Served`): a few values in its Reply, which the
edge writes into its PRODUCER child as they are; readers rebuild the spans. The edge's
SERVER span of a call is such a record too (:class:`Handling`, :class:`Handled`, a batch's
``calls``): its attribute names were half of its bytes on the bus, and a call's spans, the
adapter's included, now take 424 bytes instead of 577. The bus export
(``bus.trace_export``) publishes those, and ``busgate trace`` decodes them
(:func:`decode_batch`). The OTLP export still uses the official exporter: ``bus.otlp``
builds the SDK's ``ReadableSpan`` from these lazily, in its exporter thread.

Ids are made like the SDK's ``RandomIdGenerator`` does (``random.getrandbits``), times are
``time.time_ns()`` as in the SDK.
"""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

_bits = random.getrandbits


def random_hex(size: int, bits: Callable[[int], int] = _bits) -> str:
    """``size`` random bytes from ``bits`` (a ``getrandbits``) in lowercase hex, never all
    zero: a W3C trace id (16) or span id (8). ``bytes.hex`` takes 0.12 µs, a ``:016x``
    format 0.3."""
    return (bits(size * 8) or 1).to_bytes(size, "big").hex()


def new_span_id(bits: Callable[[int], int] = _bits) -> str:
    """:func:`random_hex` of 8 bytes, written out: it runs two or three times per traced
    call."""
    return (bits(64) or 1).to_bytes(8, "big").hex()


AttributeValue = str | bool | int | float | Sequence[str] | Sequence[int] | Sequence[float]
Attributes = dict[str, Any]


class Kind(enum.IntEnum):
    """Span kinds, numbered as OTLP numbers them (``Span.SpanKind`` in its protobuf)."""

    INTERNAL = 1
    SERVER = 2
    CLIENT = 3
    PRODUCER = 4
    CONSUMER = 5


UNSET, OK, ERROR = 0, 1, 2
"""Status codes, as OTLP numbers them."""


Row = tuple[Any, ...]
"""A finished span: the fields of :class:`SpanData`, in order (what :func:`encode_batch`
writes). Not changed once made, so the OTLP exporter's thread reads it safely; strings,
numbers, flat dicts and its children's field lists."""

TRACE_ID, ATTRIBUTES, CHILDREN = 0, 7, 12
"""Positions in a :data:`Row` that exporters read."""


# -- children: spans recorded inside their parent's row --------------------------------
# The edge's PRODUCER span (the bus request of its SERVER span) and the adapter's CLIENT span
# (the runner call of its CONSUMER span) have a fixed shape: their name and attributes follow
# from a few values. Recorded in the parent once it ended (Span.ended_child), each is a short
# list in the parent's row instead of a span of its own (object, attribute dict, row, export, and
# ~250 bytes of attribute names on the bus); readers rebuild the full span (:func:`expand`).

CHILD_KEYS: dict[int, tuple[str, ...]] = {
    Kind.PRODUCER: (  # a bus request's publish, until its reply is in
        "messaging.system",
        "messaging.destination.name",
        "busgate.system",
        "messaging.message.id",
        "busgate.kind",
    ),
    Kind.CLIENT: (  # an adapter's call of its runner
        "http.request.method",
        "url.full",
        "busgate.system",
        "http.response.status_code",
    ),
}
"""The attributes a child's ``values`` stand for, by its kind."""
REQUEST_ID_KEY = "busgate.request_id"
ERROR_TYPE_KEY = "error.type"
SERVER_KEYS = (
    "http.request.method",
    "http.route",
    "url.path",
    "client.address",
    REQUEST_ID_KEY,
    "busgate.channel",
)
"""The attributes a :class:`Handling`'s ``values`` stand for (HTTP semantic conventions)."""
STATUS_CODE_KEY = "http.response.status_code"


class Span:
    """One span being recorded. Finished by :meth:`end`, which hands its :data:`Row` to
    ``done`` (the node's exporters)."""

    __slots__ = (
        "_done",
        "_open",
        "_traceparent",
        "attributes",
        "children",
        "end_time",
        "events",
        "kind",
        "links",
        "message",
        "name",
        "parent_id",
        "span_id",
        "start",
        "status",
        "trace_id",
    )

    def __init__(
        self,
        done: Callable[[Row], None],
        trace_id: str,
        span_id: str,
        parent_id: str,
        name: str,
        kind: Kind,
        attributes: Attributes,
        links: list[tuple[str, str, Attributes]] | None = None,
        open_spans: dict[str, Any] | None = None,
    ) -> None:
        self._done = done
        self._open = open_spans
        """Where this span's context is listed while it is open, once it was handed out
        (:attr:`traceparent`): a child started from it there is not parsed again."""
        self._traceparent = ""
        self.trace_id = trace_id
        """32 lowercase hex digits."""
        self.span_id = span_id
        """16 lowercase hex digits."""
        self.parent_id = parent_id
        """The parent's span id, or "" for a trace's root."""
        self.name = name
        self.kind = kind
        self.attributes = attributes
        """Owned by the span from now on (callers pass a fresh dict)."""
        self.links = links
        self.events: list[tuple[str, int, Attributes]] | None = None
        self.children: list[list[Any]] | None = None
        """Its children's :class:`ChildData` fields."""
        self.status = UNSET
        self.message = ""
        self.end_time = 0
        self.start = time.time_ns()

    @property
    def traceparent(self) -> str:
        """This span's context as a W3C ``traceparent`` (sampled: only sampled calls have
        spans)."""
        found = self._traceparent
        if not found:
            found = self._traceparent = f"00-{self.trace_id}-{self.span_id}-01"
            if self._open is not None:
                self._open[found] = self
        return found

    def ended_child(self, fields: list[Any]) -> None:
        """Record a child that ended (its :class:`ChildData` fields, :data:`CHILD_KEYS`): a
        caller knows a child's times and outcome only once it ended, and a span object for
        it would be made and dropped for every traced call. One that ends after this span
        goes out alone, at once."""
        if self.end_time:
            self._done(child_row(self.trace_id, self.span_id, self.attributes, fields))
            return
        children = self.children
        if children is None:
            self.children = [fields]
        else:
            children.append(fields)

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self.attributes[key] = value

    def add_event(self, name: str, attributes: Attributes | None = None) -> None:
        if self.events is None:
            self.events = []
        self.events.append((name, time.time_ns(), attributes or {}))

    def fail(self, message: str) -> None:
        self.status = ERROR
        self.message = message

    def error(self, code: str, message: str = "") -> None:
        """Failed with a busgate error code (``error.type``)."""
        self.attributes[ERROR_TYPE_KEY] = code
        self.fail(message or code)

    def end(self) -> None:
        """Finish the span (a second call does nothing, as in OpenTelemetry)."""
        if self.end_time:
            return
        self.end_time = end = time.time_ns()
        if self._traceparent and self._open is not None:
            self._open.pop(self._traceparent, None)
        self._done(
            (
                self.trace_id,
                self.span_id,
                self.parent_id,
                self.name,
                self.kind,
                self.start,
                end,
                self.attributes,
                self.status,
                self.message,
                self.events or (),
                self.links or (),
                self.children or (),
            )
        )


class _Record:
    """What the records of a call's spans (:class:`Serving`, :class:`Handling`) share: an
    outcome held as values (status, message, error code) rather than as attributes."""

    __slots__ = ("children", "error_type", "events", "message", "status")
    children: list[list[Any]] | None
    events: list[tuple[str, int, Attributes]] | None
    status: int
    message: str
    error_type: str

    def ended_child(self, fields: list[Any]) -> None:
        """As :meth:`Span.ended_child` (none ends after a :class:`Serving`: a node answers
        once its runner calls are done)."""
        children = self.children
        if children is None:
            self.children = [fields]
        else:
            children.append(fields)

    def error(self, code: str, message: str = "") -> None:
        self.status = ERROR
        self.message = message or code
        self.error_type = code

    def add_event(self, name: str, attributes: Attributes | None = None) -> None:
        if self.events is None:
            self.events = []
        self.events.append((name, time.time_ns(), attributes or {}))


class Serving(_Record):
    """The CONSUMER span of a request whose spans go back in its Reply, recorded as the few
    values of a :class:`Served` rather than as a :class:`Span` (this runs for every traced
    call: no attribute dict, no row until a reader wants one). Its children are recorded
    as a :class:`Span`'s are (:meth:`ended_child`); what a runner call's span needs of a
    parent (``trace_id``, ``span_id``) it has."""

    __slots__ = (
        "_done",
        "_open",
        "end_time",
        "group",
        "parent_id",
        "span_id",
        "start",
        "trace_id",
        "traceparent",
        "values",
    )

    def __init__(
        self,
        done: Callable[[Row], None],
        trace_id: str,
        parent_id: str,
        values: list[Any],
        group: str,
        open_spans: dict[str, Any],
    ) -> None:
        self._done = done
        """The node's exporters, for a record its Reply does not take (:meth:`end`)."""
        self.trace_id = trace_id
        self.parent_id = parent_id
        """The PRODUCER span's id."""
        self.span_id = span_id = new_span_id()
        self.traceparent = traceparent = f"00-{trace_id}-{span_id}-01"
        self.values = values
        """The PRODUCER span's values (:data:`CHILD_KEYS`): destination, message id."""
        self.group = group
        self.children: list[list[Any]] | None = None
        self.events: list[tuple[str, int, Attributes]] | None = None
        self.status = UNSET
        self.message = ""
        self.error_type = ""
        self.end_time = 0
        self._open = open_spans
        open_spans[traceparent] = self
        self.start = time.time_ns()

    def finish(self, service: str, instance: str) -> bytes:
        """End it, encoded as its :class:`Served` (for ``Reply.served``)."""
        self.end_time = end = time.time_ns()
        self._open.pop(self.traceparent, None)
        return _encoder.encode(
            (
                service,
                instance,
                self.span_id,
                self.start,
                end,
                self.group,
                self.status,
                self.message,
                self.error_type,
                self.children or (),
            )
        )

    def row(self) -> Row:
        """Its :data:`Row` with its children, ended (if it was not)."""
        if not self.end_time:
            self.end_time = time.time_ns()
            self._open.pop(self.traceparent, None)
        head = consumer_row(self.trace_id, self.parent_id, self.values, self, self.end_time)
        return (*head[:10], self.events or (), (), self.children or ())

    def end(self) -> None:
        """End it and hand it to the node's exporters, as a :class:`Span` ends: a record
        that did not go in its Reply (none went, or too late for its edge)."""
        if not self.end_time:
            self._done(self.row())


class Handling(_Record):
    """An edge's SERVER span of an HTTP call, recorded as the few values of a
    :class:`Handled` rather than as a :class:`Span`: this runs for every traced call, and
    its attribute names (half of its bytes on the bus) follow from its kind. Other spans of
    the call find it as their parent in ``Tracing.open``; its bus request is recorded inside
    it (:meth:`ended_child`)."""

    __slots__ = (
        "_done",
        "_key",
        "_open",
        "_record",
        "end_time",
        "parent_id",
        "span_id",
        "start",
        "status_code",
        "trace_id",
        "values",
    )

    def __init__(
        self,
        record: Callable[[Handling], None],
        done: Callable[[Row], None],
        context: tuple[str, str, str],
        values: list[Any],
        listed: str,
        open_spans: dict[str, Any],
    ) -> None:
        self._record = record
        """The node's exporters of a call's record (``BusSpanProcessor.on_call``)."""
        self._done = done
        """The node's exporters of a row (a child that ends after this record)."""
        self.trace_id, self.span_id, self.parent_id = context
        self.values = values
        """:data:`SERVER_KEYS`' values: method, route template, path, client, request id,
        channel."""
        self._key = listed
        self._open = open_spans
        open_spans[listed] = self
        self.status_code = 0
        self.status = UNSET
        self.message = ""
        self.error_type = ""
        self.children: list[list[Any]] | None = None
        self.events: list[tuple[str, int, Attributes]] | None = None
        self.end_time = 0
        self.start = time.time_ns()

    def ended_child(self, fields: list[Any]) -> None:
        """As :meth:`Span.ended_child`."""
        if self.end_time:
            parent = {REQUEST_ID_KEY: self.values[4]}
            self._done(child_row(self.trace_id, self.span_id, parent, fields))
        else:
            _Record.ended_child(self, fields)

    def end(self) -> None:
        """Finish it (a second call does nothing) and hand it to the node's exporters."""
        if self.end_time:
            return
        self.end_time = time.time_ns()
        self._open.pop(self._key, None)
        self._record(self)

    def encoded(self) -> bytes:
        """Its :class:`Handled`, as it sits in a batch's ``calls``."""
        return _encoder.encode(
            (
                self.trace_id,
                self.span_id,
                self.parent_id,
                self.start,
                self.end_time,
                self.values,
                self.status_code,
                self.status,
                self.message,
                self.error_type,
                self.events or (),
                self.children or (),
            )
        )

    def row(self) -> Row:
        """Its :data:`Row` (for exporters other than the bus's)."""
        return (
            *server_head(
                self.trace_id,
                self.span_id,
                self.parent_id,
                self.start,
                self.end_time,
                self.values,
                self.status_code,
                self.error_type,
            ),
            self.status,
            self.message,
            self.events or (),
            (),
            self.children or (),
        )


# -- the wire form ------------------------------------------------------------------------
# Arrays rather than maps (half the bytes, no key strings to write per span). New fields go
# at the end with defaults: decoders ignore trailing items they do not know.


class Event(msgspec.Struct, array_like=True, frozen=True):
    name: str
    time: int
    attributes: Attributes = {}


class Link(msgspec.Struct, array_like=True, frozen=True):
    trace_id: str
    span_id: str
    attributes: Attributes = {}


class ChildData(msgspec.Struct, array_like=True, frozen=True):
    """A child (:meth:`Span.ended_child`) in its parent's :class:`SpanData`."""

    span_id: str
    kind: int
    start: int
    end: int
    values: list[Any] = []
    status: int = UNSET
    message: str = ""
    error_type: str = ""
    served: Served | None = None
    """A PRODUCER child's request as its answering node handled it (from its Reply)."""


class Served(msgspec.Struct, array_like=True, frozen=True):
    """How a node answered a request (``Reply.served``): its CONSUMER span and that span's
    children (the runner calls), in a few values. Travels in the Reply and then inside the
    edge's PRODUCER child of the call (:attr:`ChildData.served`); readers rebuild the full
    spans (:meth:`SpanBatch.all`, :func:`consumer_row`). Its trace, parent, destination and
    message id are the PRODUCER span's, so they are not repeated."""

    service: str
    instance: str
    span_id: str
    start: int
    end: int
    group: str = ""
    """The consumer group (``messaging.consumer.group.name``)."""
    status: int = UNSET
    message: str = ""
    error_type: str = ""
    children: list[ChildData] = []


class SpanData(msgspec.Struct, array_like=True, frozen=True):
    """A finished span as it travels on the bus (a :data:`Row`)."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    start: int
    """Nanoseconds since the epoch."""
    end: int
    attributes: Attributes = {}
    status: int = UNSET
    message: str = ""
    events: list[Event] = []
    links: list[Link] = []
    children: list[ChildData] = []

    def family(self) -> list[SpanData]:
        """This span and its children as spans of their own (:func:`expand`)."""
        if not self.children:
            return [self]
        return [
            self,
            *(
                SpanData(*child_row(self.trace_id, self.span_id, self.attributes, child))
                for child in map(msgspec.structs.astuple, self.children)
            ),
        ]


class Handled(msgspec.Struct, array_like=True, frozen=True):
    """An edge's SERVER span of a call (:class:`Handling`) in its batch's ``calls``:
    readers rebuild the span (:meth:`span`)."""

    trace_id: str
    span_id: str
    parent_id: str
    start: int
    end: int
    values: list[Any]
    """:data:`SERVER_KEYS`' values."""
    status_code: int = 0
    status: int = UNSET
    message: str = ""
    error_type: str = ""
    events: list[Event] = []
    children: list[ChildData] = []

    def span(self) -> SpanData:
        head = server_head(
            self.trace_id,
            self.span_id,
            self.parent_id,
            self.start,
            self.end,
            self.values,
            self.status_code,
            self.error_type,
        )
        return SpanData(*head, self.status, self.message, self.events, [], self.children)


class SpanBatch(msgspec.Struct, array_like=True, frozen=True):
    """Finished spans of one node (its OTel resource: ``service.name``,
    ``service.instance.id``), and the batches of other nodes it carries: the spans an
    adapter returned in its Reply, exported by the edge in one message with its own."""

    v: int
    service: str
    instance: str
    spans: list[SpanData]
    more: list[SpanBatch] = []
    calls: list[Handled] = []
    """The node's SERVER spans, as records (an edge's)."""

    def all(self) -> list[SpanBatch]:
        """This batch and every batch it carries, with spans only: its ``calls`` among its
        spans, the :class:`Served` records in its spans' children as batches of their
        nodes."""
        batch = self
        if self.calls:
            spans = [*self.spans, *(call.span() for call in self.calls)]
            batch = SpanBatch(self.v, self.service, self.instance, spans, self.more)
        found = [batch]
        for span in batch.spans:
            for child in span.children:
                served = child.served
                if served is not None:
                    row = consumer_row(
                        span.trace_id, child.span_id, child.values, served, served.end
                    )
                    consumer = SpanData(*row, served.children)  # type: ignore[call-arg]
                    found.append(SpanBatch(VERSION, served.service, served.instance, [consumer]))
        for batch in self.more:
            found.extend(batch.all())
        return found


VERSION = 1
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(SpanBatch)


def encode_batch(
    service: str, instance: str, spans: Sequence[Row], more: Sequence[bytes] = ()
) -> bytes:
    """``more``: encoded batches of other nodes, written as they are (not decoded again)."""
    if more:
        return _encoder.encode(
            (VERSION, service, instance, spans, [msgspec.Raw(data) for data in more])
        )
    return _encoder.encode((VERSION, service, instance, spans))


encode_span: Callable[[Row], bytes] = _encoder.encode
"""One span as it sits in a batch's ``spans`` (:func:`join_batch`); the encoder's own method,
not a function around it: it runs for every span that ends."""


def batch_head(service: str, instance: str) -> bytes:
    """What every batch of one node starts with (:func:`join_batch`)."""
    return b"\x96" + _encoder.encode((VERSION, service, instance))[1:]


def join_batch(
    head: bytes, spans: Sequence[bytes], more: Sequence[bytes] = (), calls: Sequence[bytes] = ()
) -> bytes:
    """A batch from its node's :func:`batch_head`, spans encoded one by one
    (:func:`encode_span`), other nodes' encoded batches and calls' records
    (:meth:`Handling.encoded`): the bytes :func:`encode_batch` makes, without holding the
    spans until the batch goes."""
    return b"".join(
        (
            head,
            _array_header(len(spans)),
            *spans,
            _array_header(len(more)),
            *more,
            _array_header(len(calls)),
            *calls,
        )
    )


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def decode_batch(data: bytes) -> SpanBatch:
    """Raises ``msgspec.DecodeError`` (``ValidationError`` included) on anything else."""
    return _decoder.decode(data)


_served_decoder = msgspec.msgpack.Decoder(Served)


def decode_served(data: bytes) -> Served:
    """A ``Reply.served`` (raises ``msgspec.DecodeError`` on anything else)."""
    return _served_decoder.decode(data)


def expand(row: Row) -> list[Row]:
    """A row and its children's (:meth:`Span.ended_child`) as rows of their own: the same spans a
    reader would have got had each been recorded alone."""
    children = row[CHILDREN] if len(row) > CHILDREN else ()
    if not children:
        return [row]
    trace_id, parent_id, attributes = row[TRACE_ID], row[1], row[ATTRIBUTES]
    return [row[:CHILDREN], *(child_row(trace_id, parent_id, attributes, c) for c in children)]


def child_row(
    trace_id: str, parent_id: str, parent_attributes: Attributes, child: Sequence[Any]
) -> Row:
    """The :data:`Row` of a child (its :class:`ChildData` fields) of the span
    ``parent_id``: name and attributes rebuilt from its values (:data:`CHILD_KEYS`)."""
    span_id, kind, start, end, values, status, message, error_type = child[:8]
    keys = CHILD_KEYS.get(kind, ())
    attrs: Attributes = {
        key: value for key, value in zip(keys, values, strict=False) if value is not None
    }
    if kind == Kind.PRODUCER:
        attrs["messaging.operation.type"] = "send"
        name = f"{attrs.get('messaging.destination.name', '')} publish"
        request_id = attrs.get("messaging.message.id")
    else:
        name = str(attrs.get("http.request.method", "")) or "call"
        request_id = parent_attributes.get(REQUEST_ID_KEY)
    if request_id is not None:
        attrs[REQUEST_ID_KEY] = request_id
    if error_type:
        attrs[ERROR_TYPE_KEY] = error_type
    return (trace_id, span_id, parent_id, name, kind, start, end, attrs, status, message, (), ())


def server_head(
    trace_id: str,
    span_id: str,
    parent_id: str,
    start: int,
    end: int,
    values: Sequence[Any],
    status_code: int,
    error_type: str,
) -> tuple[str, str, str, str, int, int, int, Attributes]:
    """The first fields of a SERVER span's :data:`Row` (to its attributes) from its
    :class:`Handled` values."""
    attributes: Attributes = dict(zip(SERVER_KEYS, values, strict=False))
    if status_code:
        attributes[STATUS_CODE_KEY] = status_code
    if error_type:
        attributes[ERROR_TYPE_KEY] = error_type
    name = f"{attributes.get('http.request.method', '')} {attributes.get('http.route', '')}"
    return (trace_id, span_id, parent_id, name, Kind.SERVER, start, end, attributes)


def consumer_row(
    trace_id: str, parent_id: str, values: Sequence[Any], served: Served | Serving, end: int
) -> Row:
    """The CONSUMER span of ``served`` (ended at ``end``) as a :data:`Row` without
    children, given its PRODUCER span: id and ``values`` (:data:`CHILD_KEYS`), whose
    destination and message id it shares."""
    scheme, dest, system, message_id, kind = (list(values) + [None] * 5)[:5]
    attributes: Attributes = {
        "messaging.system": scheme,
        "messaging.operation.type": "process",
        "messaging.destination.name": dest,
        "busgate.system": system,
        "messaging.consumer.group.name": served.group,
        "messaging.message.id": message_id,
        REQUEST_ID_KEY: message_id,
        "busgate.kind": kind,
    }
    if served.error_type:
        attributes[ERROR_TYPE_KEY] = served.error_type
    return (
        trace_id,
        served.span_id,
        parent_id,
        f"{dest} process",
        Kind.CONSUMER,
        served.start,
        end,
        attributes,
        served.status,
        served.message,
        (),
        (),
    )


CONSUMER_LIKE = frozenset({Kind.SERVER, Kind.CONSUMER})
"""Kinds whose parent span is in another process (the caller's, the producer's)."""
