"""The sample RSocket runner: the RPC runner's sagas over RSocket (tcp, and websocket).

``busgate runner rsocket --listen HOST:PORT`` (tcp; ``--ws-listen HOST:PORT`` adds a
websocket endpoint at ``/rsocket``). The route (routing metadata) is the saga path; the
request's data is its parameters as JSON; a ``message/x.busgate.meta+json`` metadata entry
carries ``requestId``, ``traceparent``, channel, path, method and identity.

Request-response: ``echo``, ``meta``, ``sleep`` (``ms``), ``fail`` (``status``,
``message``), ``calls`` (the log below). Request-stream: ``count`` (``from``, ``to``,
``wait`` ms; ``fail_at=N`` errors instead of emitting N), one payload per number, emitted
only as the requester asks (request-n).

A failure is an RSocket APPLICATION_ERROR whose data is ``{"status", "error"}``, so the
adapter can pass a 4xx through. The runner logs every call (route, request id,
traceparent, for streams how many payloads it emitted and whether it got CANCEL), and
answers it on the ``calls`` route so tests can check what crossed the gateway.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import signal
import time
from collections.abc import AsyncGenerator, Callable, Coroutine
from typing import Any

import msgspec
from rsocket.extensions.composite_metadata import CompositeMetadata
from rsocket.payload import Payload
from rsocket.routing.request_router import RequestRouter
from rsocket.routing.routing_request_handler import RoutingRequestHandler
from rsocket.rsocket_server import RSocketServer
from rsocket.streams.stream_from_async_generator import StreamFromAsyncGenerator
from rsocket.transports.tcp import TransportTCP

from busgate.adapters.rsocket.metadata import meta_of

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode
log = logging.getLogger("busgate.runner.rsocket")


class SagaError(Exception):
    """A failure sent to the requester as ``{"status", "error"}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(_encode({"status": status, "error": message}).decode())


def params_of(payload: Payload) -> dict[str, Any]:
    try:
        params = _decode(payload.data) if payload.data else {}
    except msgspec.DecodeError:
        raise SagaError(400, "the data is not JSON") from None
    return params if isinstance(params, dict) else {"value": params}


def _int(params: dict[str, Any], key: str, default: int) -> int:
    try:
        return int(params.get(key, default))
    except (TypeError, ValueError):
        raise SagaError(400, f"parameter {key!r} must be an integer") from None


def concurrent(
    handler: Callable[..., Coroutine[Any, Any, Payload]],
) -> Callable[..., Coroutine[Any, Any, asyncio.Future[Payload]]]:
    """Run a request-response handler as its own task.

    rsocket-py awaits a route's coroutine inside the connection's receive loop, so a slow
    saga (``sleep``) would hold up every other request on that connection, CANCEL frames
    included. A route that returns a Future is answered when the Future is done, and CANCEL
    cancels it.
    """

    @functools.wraps(handler)
    async def start(*args: Any, **kwargs: Any) -> asyncio.Future[Payload]:
        return asyncio.ensure_future(handler(*args, **kwargs))

    return start


class Sagas:
    """The routes, and the log of calls they keep."""

    def __init__(self) -> None:
        self.calls: collections.deque[dict[str, Any]] = collections.deque(maxlen=10_000)
        self.cancels: asyncio.Queue[str | None] = asyncio.Queue(maxsize=1000)
        """Request ids of calls that got CANCEL (for tests in the same process)."""
        self.arrivals: asyncio.Queue[str] = asyncio.Queue(maxsize=1000)
        """Routes of the calls as they arrive (for tests in the same process)."""
        self.router = RequestRouter()
        r = self.router
        r.response("echo")(concurrent(self.echo))
        r.response("meta")(concurrent(self.meta))
        r.response("sleep")(concurrent(self.sleep))
        r.response("fail")(concurrent(self.fail))
        r.response("calls")(concurrent(self.list_calls))
        r.response_unknown()(concurrent(self.unknown))
        r.stream("count")(self.count)
        r.stream_unknown()(self.unknown_stream)

    def log(self, route: str, payload: Payload, composite: CompositeMetadata) -> dict[str, Any]:
        meta = meta_of(composite)
        call = {
            "route": route,
            "requestId": meta.get("requestId"),
            "traceparent": meta.get("traceparent"),
            "parameters": params_of(payload),
            "at": time.monotonic(),
        }
        self.calls.append(call)
        with contextlib.suppress(asyncio.QueueFull):
            self.arrivals.put_nowait(route)
        return call

    async def echo(self, payload: Payload, composite_metadata: CompositeMetadata) -> Payload:
        self.log("echo", payload, composite_metadata)
        return Payload(payload.data or b"null")

    async def meta(self, payload: Payload, composite_metadata: CompositeMetadata) -> Payload:
        self.log("meta", payload, composite_metadata)
        return Payload(_encode(meta_of(composite_metadata)))

    async def sleep(self, payload: Payload, composite_metadata: CompositeMetadata) -> Payload:
        call = self.log("sleep", payload, composite_metadata)
        ms = _int(call["parameters"], "ms", 100)
        try:
            await asyncio.sleep(ms / 1000)
        except asyncio.CancelledError:  # CANCEL from the requester (its deadline passed)
            call["cancelled"] = True
            with contextlib.suppress(asyncio.QueueFull):
                self.cancels.put_nowait(call["requestId"])
            raise
        return Payload(_encode({"slept": ms}))

    async def fail(self, payload: Payload, composite_metadata: CompositeMetadata) -> Payload:
        p = self.log("fail", payload, composite_metadata)["parameters"]
        raise SagaError(_int(p, "status", 500), str(p.get("message", "failed on purpose")))

    async def list_calls(self, payload: Payload, composite_metadata: CompositeMetadata) -> Payload:
        return Payload(_encode(list(self.calls)))

    async def unknown(self, payload: Payload, composite_metadata: CompositeMetadata) -> Payload:
        raise SagaError(404, "no such saga")

    async def unknown_stream(
        self, payload: Payload, composite_metadata: CompositeMetadata
    ) -> StreamFromAsyncGenerator:
        raise SagaError(404, "no such stream saga")

    async def count(
        self, payload: Payload, composite_metadata: CompositeMetadata
    ) -> StreamFromAsyncGenerator:
        call = self.log("count", payload, composite_metadata)
        p = call["parameters"]
        first, to, wait = _int(p, "from", 1), _int(p, "to", 10), _int(p, "wait", 1000)
        fail_at = _int(p, "fail_at", 0)
        if p.get("previous") not in (None, ""):  # the client's Last-Event-ID
            first = _int(p, "previous", 0) + 1
        call.update(emitted=0, cancelled=False, completed=False)

        async def numbers() -> AsyncGenerator[tuple[Payload, bool], None]:
            for n in range(first, to + 1):
                if n > first and wait > 0:
                    await asyncio.sleep(wait / 1000)
                if fail_at and n >= fail_at:
                    raise SagaError(500, "count failed on purpose")
                call["emitted"] += 1
                call["completed"] = n == to  # the last is sent with the complete flag
                yield Payload(str(n).encode()), n == to

        def cancelled() -> None:
            call["cancelled"] = True
            with contextlib.suppress(asyncio.QueueFull):
                self.cancels.put_nowait(call["requestId"])

        if first > to:
            return StreamFromAsyncGenerator(_nothing, on_cancel=cancelled)
        return StreamFromAsyncGenerator(numbers, on_cancel=cancelled)


async def _nothing() -> AsyncGenerator[tuple[Payload, bool], None]:
    return
    yield  # an async generator that ends at once (the stream completes empty)


class Listener:
    """The tcp listener and its connections, each with its own RSocket server."""

    def __init__(self, sagas: Sagas) -> None:
        self.sagas = sagas
        self.server: asyncio.Server | None = None
        self.connections: dict[RSocketServer, asyncio.StreamWriter] = {}

    def _handler(self) -> RoutingRequestHandler:
        return RoutingRequestHandler(self.sagas.router)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for gone in [s for s, w in self.connections.items() if w.is_closing()]:
            del self.connections[gone]
        server = RSocketServer(TransportTCP(reader, writer), handler_factory=self._handler)
        self.connections[server] = writer

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._accept, host, port)

    async def close(self) -> None:
        """Stop listening and drop every connection (``Server.close`` keeps them open)."""
        if self.server is not None:
            self.server.close()
        for server in list(self.connections):
            with contextlib.suppress(Exception):
                await server.close()
        self.connections.clear()
        if self.server is not None:
            await self.server.wait_closed()


async def serve(host: str, port: int, sagas: Sagas) -> Listener:
    listener = Listener(sagas)
    await listener.start(host, port)
    return listener


async def websocket_app(host: str, port: int, sagas: Sagas) -> Any:
    from aiohttp import web
    from rsocket.transports.aiohttp_websocket import websocket_handler_factory

    app = web.Application()
    app.router.add_get(
        "/rsocket",
        websocket_handler_factory(handler_factory=lambda: RoutingRequestHandler(sagas.router)),
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def main(listen: str, ws_listen: str | None) -> None:
    host, _, port = listen.rpartition(":")
    sagas = Sagas()
    server = await serve(host or "127.0.0.1", int(port), sagas)
    ws = None
    if ws_listen:
        ws_host, _, ws_port = ws_listen.rpartition(":")
        ws = await websocket_app(ws_host or "127.0.0.1", int(ws_port), sagas)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.close()
        if ws is not None:
            await ws.cleanup()


def run(listen: str, ws_listen: str | None = None) -> None:
    # The library logs every routed failure (the ``fail`` saga's too) with a traceback.
    logging.getLogger("rsocket").setLevel(logging.CRITICAL)
    asyncio.run(main(listen, ws_listen))
