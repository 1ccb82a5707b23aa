"""What an edge records about its calls: a SERVER span per call, a PRODUCER span per bus
request, Prometheus metrics (``/metrics``) and the ids of JSON log lines.

All of it is installed only when configured (``[telemetry]``, ``--log-format json``): a
:class:`CallTelemetry` that the front middleware runs around each call, and a wrapper around
the bus's ``request`` and ``stream`` (``Bus.observe``). Without them an edge runs exactly as
before, at no cost.

Sampling is decided once per call, as the front middleware assigns the call's ids: the
client's sampled flag when ``accept_trace`` takes its ``traceparent``, else ``sampling``. An
unsampled call goes on with the flag off, so no node after this one records it either
(``bus.tracing``).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from busgate.bus import calllog, parse_url
from busgate.bus import tracing as tr
from busgate.bus.metrics import (
    CONTENT_TYPE,
    LATENCY_BUCKETS,
    BusCollector,
    Count,
    Counter,
    Histogram,
    Observed,
    exposition,
)
from busgate.bus.naming import Names
from busgate.bus.observe import SendRequest, SendStream
from busgate.contracts.config import METHODS, Config
from busgate.contracts.errors import BusgateError
from busgate.contracts.wire import Reply, Request, StreamStep
from busgate.edge import keys

TRACING: web.AppKey[tr.Tracing] = web.AppKey("tracing")
METRICS: web.AppKey[EdgeMetrics] = web.AppKey("metrics")


class EdgeMetrics:
    """The edge's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.registry = CollectorRegistry()
        self.calls = Counter(
            "busgate_edge_calls",
            "Calls answered by this edge, by channel, system, method and status",
            ["channel", "system", "method", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "busgate_edge_call_seconds",
            "Edge total: from the call's arrival to its answer (a stream: to its end)",
            ["channel"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.round_trip = Histogram(
            "busgate_bus_round_trip_seconds",
            "Bus round trip of a request: publish to reply",
            ["system"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "busgate_auth_failures",
            "Calls refused by authentication or authorisation, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.in_flight = 0
        self._children: dict[tuple[str, str, int], tuple[Count, Observed]] = {}
        """(channel, method, status) as the client sent them -> their series (bounded: the
        client picks the first two)."""

    def call(self, request: web.Request, status: int, code: str, seconds: float) -> None:
        channel = request.match_info.get("channel", "")
        key = (channel, request.method, status)
        found = self._children.get(key)
        if found is None:
            ch = self.config.channels.get(channel)
            # Only configured names become labels: a client must not grow the series.
            name, system = (channel, ch.system) if ch is not None else ("", "")
            method = request.method if request.method in METHODS else "OTHER"
            found = (
                self.calls.labels(name, system, method, str(status)),
                self.duration.labels(name),
            )
            if len(self._children) < 10_000:
                self._children[key] = found
        found[0].inc()
        found[1].observe(seconds)
        if status in (401, 403):
            self.auth_failures.labels(code).inc()

    def bus_round_trip(self, system: str, seconds: float) -> None:
        self.round_trip.labels(system).observe(seconds)


class _EdgeCollector(Collector):
    """Values read at scrape time: in-flight calls, open streams, sessions."""

    def __init__(self, app: web.Application, metrics: EdgeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "busgate_edge_in_flight", "Calls being handled", value=self.metrics.in_flight
        )
        yield GaugeMetricFamily(
            "busgate_edge_open_streams", "Open SSE streams", value=len(self.app[keys.STREAMS])
        )
        auth = self.app.get(keys.AUTH)
        sessions = auth.sessions if auth is not None else None
        yield GaugeMetricFamily(
            "busgate_sessions",
            "Sessions in this edge's copy of the session store",
            value=sessions.size if sessions is not None else 0,
        )


class EdgeCalls:
    """Wraps the bus's ``request``/``stream`` (``Bus.observe``): PRODUCER spans and the bus
    round-trip histogram.

    The PRODUCER span lasts from the publish until the reply is in (a stream: its last
    step), so its end marks the reply's arrival: ``busgate trace`` reads the bus transit of
    both directions from it and the adapter's CONSUMER span.
    """

    def __init__(
        self, tracing: tr.Tracing | None, metrics: EdgeMetrics | None, url: str, prefix: str
    ):
        self.tracing = tracing
        self.metrics = metrics
        self.producer = tr.Messaging(parse_url(url)[0], Names(prefix), "send")

    def _sent_with(self, req: Request, traceparent: str) -> Request:
        """``req`` carrying a span's context. A request's answering node returns its
        spans in the Reply, and they go out with this node's in one bus message
        (``bus.trace_export``); a stream's node exports its own (no single reply to carry
        them)."""
        bus = self.tracing.bus if self.tracing is not None else None
        carry = req.kind == "request" and not req.detach and bus is not None
        return msgspec.structs.replace(
            req, traceparent=traceparent, spans_in_reply=carry, served_in_reply=carry
        )

    async def request(self, inner: SendRequest, req: Request) -> Reply:
        tracing = self.tracing
        # The call's open SERVER span (Tracing.open), when this is a traced call's request.
        if tracing is None or (parent := tracing.open.get(req.traceparent)) is None:
            return await self._request(inner, req)
        # The common case, a call's request: its PRODUCER span is recorded in the call's
        # SERVER span once it ended (Span.ended_child), with no span object of its own:
        # this runs for every traced call.
        span_id = tr.new_span_id()
        req = self._sent_with(req, f"00-{parent.trace_id}-{span_id}-01")
        metrics = self.metrics
        start = time.time_ns()
        status, message, code = tr.UNSET, "", ""
        served = None
        try:
            reply = await inner(req)
        except BaseException as exc:
            if isinstance(exc, BusgateError):
                status, message, code = tr.ERROR, exc.message or exc.code, exc.code
            raise
        else:
            if reply.error is not None:
                error = reply.error
                status, message, code = tr.ERROR, error.message or error.code, error.code
            if reply.served:  # the adapter's spans: they go out in this one (ChildData.served)
                served = msgspec.Raw(reply.served)
        finally:
            end = time.time_ns()
            values = self.producer.values(req)
            kind = tr.Kind.PRODUCER
            fields = [span_id, kind, start, end, values, status, message, code, served]
            parent.ended_child(fields)
            if metrics is not None:
                metrics.bus_round_trip(req.system, (end - start) / 1e9)
        if reply.spans and tracing.bus is not None:  # a bus-native runner's span batch
            tracing.bus.carry(parent.trace_id, req.id, reply.spans)
        return reply

    async def _request(self, inner: SendRequest, req: Request) -> Reply:
        """A request that is not a traced call's own (none, or a span of its own)."""
        span = None
        if self.tracing is not None and tr.is_sampled(req.traceparent):
            span = self.producer.start(self.tracing, req)
            req = self._sent_with(req, span.traceparent)
        start = time.perf_counter()
        try:
            reply = await inner(req)
        except BaseException as exc:
            if span is not None:
                if isinstance(exc, BusgateError):
                    tr.fail(span, exc.code, exc.message)
                span.end()
            raise
        finally:
            if self.metrics is not None:
                self.metrics.bus_round_trip(req.system, time.perf_counter() - start)
        if span is not None:
            if reply.error is not None:  # before it ends: an ended span's status is final
                tr.fail(span, reply.error.code, reply.error.message)
            span.end()
            if reply.spans and self.tracing is not None and self.tracing.bus is not None:
                self.tracing.bus.carry(span.trace_id, req.id, reply.spans)
        return reply

    async def stream(
        self,
        inner: SendStream,
        req: Request,
        *,
        idle_timeout: float,
        window: int = 0,
        window_bytes: int = 0,
    ) -> AsyncIterator[StreamStep]:
        span = None  # a stream's span has events (its steps): a span of its own
        if self.tracing is not None and tr.is_sampled(req.traceparent):
            span = self.producer.start(self.tracing, req)
            req = self._sent_with(req, span.traceparent)
        steps = inner(req, idle_timeout=idle_timeout, window=window, window_bytes=window_bytes)
        try:
            async for step in steps:
                if span is not None and (step.items or step.last):
                    span.add_event("step", {"seq": step.seq, "items": len(step.items)})
                yield step
        except BusgateError as exc:
            if span is not None:
                tr.fail(span, exc.code, exc.message)
            raise
        finally:
            await steps.aclose()  # type: ignore[attr-defined]  # an async generator
            if span is not None:
                span.end()


def traced(request: web.Request) -> bool:
    """Whether this call is traced: without, :func:`publishing` would only yield the call's
    ``traceparent``, and a caller on the hot path skips entering it (a generator-based
    context manager costs a few µs per call)."""
    tracing = request.app.get(TRACING)
    return tracing is not None and tr.is_sampled(request[keys.TRACEPARENT])


@contextlib.contextmanager
def publishing(
    request: web.Request,
    system: str,
    destination: str,
    message_id: str,
    attributes: dict[str, Any],
) -> Iterator[str]:
    """A PRODUCER span around a message this call publishes without waiting for an answer
    (a command, an ad hoc message), when the call is traced. Yields the ``traceparent`` the
    message carries: the span's, else the call's."""
    traceparent: str = request[keys.TRACEPARENT]
    tracing = request.app.get(TRACING)
    if tracing is None or not tr.is_sampled(traceparent):
        yield traceparent
        return
    span = tracing.start(
        f"{destination} publish",
        tr.Kind.PRODUCER,
        traceparent,
        {
            "messaging.system": system,
            "messaging.operation.type": "send",
            "messaging.destination.name": destination,
            "messaging.message.id": message_id,
            tr.REQUEST_ID: request[keys.REQUEST_ID],
            **attributes,
        },
    )
    try:
        yield span.traceparent
    except BusgateError as exc:
        tr.fail(span, exc.code, exc.message)
        raise
    except BaseException as exc:
        tr.fail(span, status_of(exc)[1])
        raise
    finally:
        span.end()


def auth_reason(response: web.StreamResponse) -> str:
    """Why the auth middleware refused a call; it answers (rather than raises) 401s, telling
    a missing token from an invalid one in ``WWW-Authenticate`` (RFC 6750)."""
    if response.status == 403:
        return "forbidden"
    challenge = response.headers.get("WWW-Authenticate", "")
    return "invalid_token" if 'error="invalid_token"' in challenge else "missing_token"


def status_of(exc: BaseException) -> tuple[int, str]:
    """The status and busgate error code a call that raised ``exc`` is counted with."""
    if isinstance(exc, BusgateError):
        return exc.status, exc.code
    if isinstance(exc, web.HTTPException):
        return exc.status, ""
    if isinstance(exc, Exception):
        return 500, "internal"
    return 499, "cancelled"  # the client went away


Call = tuple[tr.Handling | None, float]
"""What :meth:`CallTelemetry.begin` hands to :meth:`CallTelemetry.end`: the SERVER span, if
any, and the call's start."""


class CallTelemetry:
    """The call's SERVER span, its metrics and its log ids, run by the front middleware
    (``edge.middleware.front``) around the handler rather than as a middleware of its own:
    an aiohttp middleware is a coroutine frame every call enters and every resumption passes
    through, and as a layer of its own this cost the traced bench ~3 µs a call (py-spy)."""

    def __init__(self, tracing: tr.Tracing | None, metrics: EdgeMetrics | None) -> None:
        self.tracing = tracing
        self.metrics = metrics
        self.ratio = tracing.sampling if tracing is not None else 1.0
        self.coin = random.Random().random
        self.logs = calllog.enabled

    def sample(self) -> bool:
        """Whether a new trace (the client continued none) is recorded: decided once, here;
        the flag travels with the call (``bus.tracing``)."""
        return self.ratio >= 1.0 or self.coin() < self.ratio

    def begin(self, request: web.Request, context: tuple[str, str, str, str]) -> Call | None:
        """``context``: the call's (trace id, span id, parent span id, flags), as the front
        middleware assigned them; the SERVER span takes those ids (none are made twice)."""
        if not request.path.startswith("/api/"):  # health, readiness, metrics: not calls
            return None
        span = None
        tracing = self.tracing
        trace_id, span_id, parent_id, flags = context
        if tracing is not None and flags[-1] in _SAMPLED:
            route = request.match_info.route.resource
            span = tracing.handling(
                (trace_id, span_id, parent_id),
                [  # bus.spans.SERVER_KEYS
                    request.method,
                    route.canonical if route is not None else request.path,
                    request.path,
                    request.remote or "",
                    request[keys.REQUEST_ID],
                    request.match_info.get("channel", ""),
                ],
                request[keys.TRACEPARENT],  # the PRODUCER span's parent
            )
        if self.logs:
            calllog.CALL.set((request[keys.REQUEST_ID], trace_id))
        if self.metrics is not None:
            self.metrics.in_flight += 1
        return span, time.perf_counter()

    def end(
        self,
        request: web.Request,
        call: Call,
        response: web.StreamResponse | None,
        status: int,
        code: str,
    ) -> None:
        """``code``: the busgate error code of what the handler raised ("" when it
        answered)."""
        span, start = call
        if not code and (status == 401 or status == 403) and response is not None:
            code = auth_reason(response)
        metrics = self.metrics
        if metrics is not None:
            metrics.in_flight -= 1
            metrics.call(request, status, code, time.perf_counter() - start)
        if span is not None:
            span.status_code = status
            if status >= 500 or code == "cancelled":
                span.error(code or str(status))
            elif code:
                span.error_type = code  # refused, not failed: the span's status stays unset
            span.end()


_SAMPLED = frozenset("13579bdf")
"""Last hex digit of ``traceparent`` flags with the sampled bit set."""


async def metrics_handler(request: web.Request) -> web.Response:
    body = exposition(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def call_telemetry(config: Config, node: str) -> CallTelemetry | None:
    """The edge's call telemetry, when ``config`` asks for spans, metrics or log ids (None:
    the edge runs exactly as without telemetry)."""
    telemetry = config.telemetry
    tracing = (
        tr.Tracing(telemetry, service=telemetry.edge_service, node=node)
        if telemetry.tracing
        else None
    )
    metrics = EdgeMetrics(config) if telemetry.metrics else None
    if tracing is None and metrics is None and not calllog.enabled:
        return None
    return CallTelemetry(tracing, metrics)


def install(app: web.Application, config: Config, calls: CallTelemetry | None) -> None:
    """Add what ``calls`` (from :func:`call_telemetry`, run by the front middleware) needs: its
    span export and the bus wrapper, ``/metrics``; call after the bus's cleanup context
    (the bus must be there)."""
    if calls is None:
        return
    tracing, metrics = calls.tracing, calls.metrics
    if tracing is not None:
        app[TRACING] = tracing
    if metrics is not None:
        app[METRICS] = metrics
        metrics.registry.register(_EdgeCollector(app, metrics))
        app.router.add_get("/metrics", metrics_handler)
    if tracing is None and metrics is None:
        return

    async def telemetry_ctx(app: web.Application) -> AsyncIterator[None]:
        bus = app[keys.BUS]
        if metrics is not None:
            metrics.registry.register(BusCollector(bus))
        bus.observe(EdgeCalls(tracing, metrics, config.gateway.bus, config.gateway.prefix))
        if tracing is not None:
            await tracing.export_to_bus(bus, config.gateway.bus)
        yield
        if tracing is not None:
            await tracing.close()

    app.cleanup_ctx.append(telemetry_ctx)
