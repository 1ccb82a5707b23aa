"""What an adapter records: a CONSUMER span per request taken off the bus, a CLIENT span per
runner call (whose context the runner receives as its ``traceparent``), Prometheus metrics
on ``--metrics-listen``, and the ids of JSON log lines.

Installed only when configured, as wrappers around the handler given to ``Bus.serve`` and
around each system client's runner call (``RpcClient.observe``): an adapter without
``[telemetry]`` runs exactly as before. A span is started only for a sampled ``traceparent``
(the edge decided; see ``bus.tracing``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import msgspec
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from busgate.bus import calllog, parse_url
from busgate.bus import tracing as tr
from busgate.bus.base import Bus, Responder
from busgate.bus.commands import Execute
from busgate.bus.metrics import (
    CONTENT_TYPE,
    LATENCY_BUCKETS,
    BusCollector,
    Counter,
    Histogram,
    exposition,
)
from busgate.bus.naming import Names
from busgate.contracts.config import Config
from busgate.contracts.errors import BusgateError
from busgate.contracts.wire import Error, Request

Handle = Callable[[Request, Responder], Awaitable[None]]
Post = Callable[[Request, bytes], Awaitable[tuple[int, dict[str, str], bytes]]]


class AdapterMetrics(Collector):
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "busgate_adapter_requests",
            "Requests taken off the bus, by system and kind",
            ["system", "kind"],
            registry=self.registry,
        )
        self.runner_calls = Counter(
            "busgate_runner_calls",
            "Runner calls by system and HTTP status (or busgate error code when none came)",
            ["system", "status"],
            registry=self.registry,
        )
        self.runner_seconds = Histogram(
            "busgate_runner_call_seconds",
            "Runner call latency, as the adapter sees it",
            ["system"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = 0
        self.streams = 0
        self.registry.register(self)

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "busgate_adapter_in_flight", "Requests being handled", value=self.in_flight
        )
        yield GaugeMetricFamily(
            "busgate_adapter_open_streams", "Saga loops running", value=self.streams
        )


class AdapterObserver:
    def __init__(self, config: Config, node: str) -> None:
        telemetry = config.telemetry
        self.config = config
        self.tracing = (
            tr.Tracing(telemetry, service=telemetry.adapter_service, node=node)
            if telemetry.tracing
            else None
        )
        self.metrics = AdapterMetrics() if telemetry.metrics else None
        self.system = parse_url(config.gateway.bus)[0]
        self.names = Names(config.gateway.prefix)
        self.logs = calllog.enabled
        self._site: web.AppRunner | None = None
        self.consumer = tr.Messaging(self.system, self.names, "process")

    @property
    def active(self) -> bool:
        return self.tracing is not None or self.metrics is not None or self.logs

    async def start(self, bus: Bus, metrics_listen: str | None) -> None:
        if self.metrics is not None:
            self.metrics.registry.register(BusCollector(bus))
            if metrics_listen:
                await self._serve_metrics(metrics_listen)
        if self.tracing is not None:
            await self.tracing.export_to_bus(bus, self.config.gateway.bus)

    async def _serve_metrics(self, listen: str) -> None:
        assert self.metrics is not None
        registry = self.metrics.registry

        async def metrics(request: web.Request) -> web.Response:
            return web.Response(body=exposition(registry), headers={"Content-Type": CONTENT_TYPE})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        self._site = web.AppRunner(app, access_log=None)
        await self._site.setup()
        host, _, port = listen.rpartition(":")
        await web.TCPSite(self._site, host.strip("[]") or "0.0.0.0", int(port)).start()

    async def close(self) -> None:
        if self.tracing is not None:
            await self.tracing.close()
        if self._site is not None:
            await self._site.cleanup()

    async def handle(self, inner: Handle, req: Request, responder: Responder) -> None:
        """Wraps ``AdapterService.handle``: the CONSUMER span covers the whole handling (up
        to the reply when its spans travel in it). A request whose edge wants its spans
        back (``spans_in_reply``, the usual case) records it as a :class:`Serving`, which
        its Reply carries (``Reply.served``)."""
        tracing = self.tracing
        span: tr.Span | tr.Serving | None = None
        held = None
        if tracing is not None and tr.is_sampled(req.traceparent):
            held = tracing.bus if req.spans_in_reply and not req.detach else None
            if held is not None and req.served_in_reply:
                span = self.consumer.serving(tracing, req)
            else:  # its edge predates Reply.served, or takes no spans back
                span = self.consumer.start(tracing, req)
            if held is not None:
                held.hold(req.id)
                responder.span = span
                responder.span_export = held
            req = msgspec.structs.replace(req, traceparent=span.traceparent)
        if self.logs:
            calllog.CALL.set((req.id, span.trace_id if span else _trace_id(req)))
        metrics = self.metrics
        stream = req.kind == "stream"
        if metrics is not None:
            metrics.requests.labels(req.system, req.kind).inc()
            metrics.in_flight += 1
            metrics.streams += stream
        try:
            await inner(req, responder)
        finally:
            if metrics is not None:
                metrics.in_flight -= 1
                metrics.streams -= stream
            if span is not None and not span.end_time:
                if held is not None:  # no reply went (or too late for its edge)
                    held.release(req.id)
                if responder.failure:  # an error answer, whatever caused it
                    span.error(responder.failure)
                if responder.cancelled.is_set():
                    span.add_event("cancelled")
                span.end()

    def command(self, inner: Execute) -> Execute:
        """Wraps a command worker's ``execute``: a CONSUMER span per attempt, in a trace of
        its own (an attempt may run long after the call, or again) with a *link* to the
        issuing call's PRODUCER span, whose context the command carries."""
        tracing = self.tracing
        if tracing is None and not self.logs:
            return inner

        async def execute(req: Request, attempt: int) -> Error | None:
            span = None
            if tracing is not None and tr.is_sampled(req.traceparent):
                dest = self.names.command(req.system)
                span = tracing.start(
                    f"{dest} process",
                    tr.Kind.CONSUMER,
                    "",
                    {
                        "messaging.system": self.system,
                        "messaging.operation.type": "process",
                        "messaging.destination.name": dest,
                        "messaging.message.id": req.id,
                        tr.REQUEST_ID: req.id,
                        "busgate.kind": req.kind,
                        "busgate.system": req.system,
                        "busgate.command_id": req.id,
                        "busgate.attempt": attempt,
                    },
                    links=(req.traceparent,),
                )
                req = msgspec.structs.replace(req, traceparent=span.traceparent)
            if self.logs:
                calllog.CALL.set((req.id, span.trace_id if span else _trace_id(req)))
            try:
                error = await inner(req, attempt)
            except BaseException as exc:
                if span is not None:
                    tr.fail(span, "adapter_error", type(exc).__name__)
                    span.end()
                raise
            if span is not None:
                if error is not None:
                    tr.fail(span, error.code, error.message)
                span.end()
            return error

        return execute

    def runner(self, system: str, base_url: str) -> Callable[[Post, Request, bytes], Any]:
        """The wrapper of one system client's runner call (see ``RpcClient.observe``)."""
        tracing, metrics = self.tracing, self.metrics
        seconds = metrics.runner_seconds.labels(system) if metrics is not None else None

        async def post(
            inner: Post, req: Request, parameters: bytes
        ) -> tuple[int, dict[str, str], bytes]:
            # The CONSUMER span (open, so sampled) is the usual parent: the CLIENT span is
            # recorded in it once it ended (Span.ended_child), no span object of its own.
            parent = tracing.open.get(req.traceparent) if tracing is not None else None
            if parent is None:
                return await _post(inner, req, parameters)
            span_id = tr.new_span_id()
            req = msgspec.structs.replace(req, traceparent=f"00-{parent.trace_id}-{span_id}-01")
            status = 0
            state, message, code = tr.UNSET, "", ""
            start = time.time_ns()
            try:
                status, headers, payload = await inner(req, parameters)
            except BusgateError as exc:
                state, message, code = tr.ERROR, exc.message or exc.code, exc.code
                raise
            else:
                if status >= 400:
                    code = "upstream_error" if status >= 500 else "runner_refused"
                    state, message = tr.ERROR, code
            finally:
                end = time.time_ns()
                values = ["POST", f"{base_url}/{req.path}", system, status or None]  # CHILD_KEYS
                kind = tr.Kind.CLIENT
                parent.ended_child([span_id, kind, start, end, values, state, message, code])
                if metrics is not None and (status or code):
                    metrics.runner_calls.labels(system, str(status) if status else code).inc()
                if seconds is not None:
                    seconds.observe((end - start) / 1e9)
            return status, headers, payload

        async def _post(
            inner: Post, req: Request, parameters: bytes
        ) -> tuple[int, dict[str, str], bytes]:
            """A runner call of an untraced request, or one whose CONSUMER span is not open
            here."""
            span: tr.Span | None = None
            if tracing is not None and tr.is_sampled(req.traceparent):
                url = f"{base_url}/{req.path}"
                span = tracing.start(
                    "POST",
                    tr.Kind.CLIENT,
                    req.traceparent,
                    {
                        "http.request.method": "POST",
                        "url.full": url,
                        tr.REQUEST_ID: req.id,
                        "busgate.system": system,
                    },
                )
                req = msgspec.structs.replace(req, traceparent=span.traceparent)
            start = time.perf_counter()
            try:
                status, headers, payload = await inner(req, parameters)
            except BusgateError as exc:
                if metrics is not None:
                    metrics.runner_calls.labels(system, exc.code).inc()
                if span is not None:
                    tr.fail(span, exc.code, exc.message)
                raise
            else:
                if metrics is not None:
                    metrics.runner_calls.labels(system, str(status)).inc()
                if span is not None:
                    span.set_attribute("http.response.status_code", status)
                    if status >= 400:
                        tr.fail(span, "upstream_error" if status >= 500 else "runner_refused")
            finally:
                if seconds is not None:
                    seconds.observe(time.perf_counter() - start)
                if span is not None:
                    span.end()
            return status, headers, payload

        return post


def _trace_id(req: Request) -> str:
    parts = req.traceparent.split("-")
    return parts[1] if len(parts) == 4 else ""
