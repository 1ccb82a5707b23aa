"""``/api/stream/{channel}/{path}``: a saga's steps as server-sent events.

The call becomes a ``stream`` Request on the bus exactly as ``/api/request`` would (same
channels, methods, body and query, same auth); ``Last-Event-ID`` becomes ``resume``. The
adapter runs the saga loop and sends one StreamStep per runner call; each step is written
as one event per item, the step's cursor as the ``id`` of its last event (``edge.sse``), and
flushed at once. ``event: end`` follows the last step; ``event: error`` (the edge's JSON error
body) a failure, and then the response ends.

Headers are only sent with the first step: until then a failure (unknown channel, bad body,
no adapter, a runner refusing the first call, a limit) is an ordinary JSON error with its
status, which an ``EventSource`` treats as final instead of reconnecting.

Timing:

- Idle timeout. The edge never sees the runner's ``wait``; instead the adapter sends an
  empty keepalive step every ``gateway.stream_heartbeat`` during a pause (see
  ``adapters.rpc.client.RpcClient.stream``). So a live saga is heard from at least every
  ``heartbeat + system timeout`` seconds, whatever the wait, and the edge gives up on a
  silent stream after that plus :data:`IDLE_MARGIN` (50 s with the defaults), ending it
  with an error event: the adapter died or the bus lost the stream.
- Heartbeat. A comment goes to the client whenever nothing was written for
  ``gateway.stream_heartbeat`` seconds, to keep proxies and load balancers from closing an
  idle connection. Write errors here are how a vanished client is noticed at the latest.
- Duration. Past ``gateway.max_stream_duration`` (0 = no limit) the stream ends with an
  error event (``deadline_exceeded``).

Client gone. The app enables aiohttp's handler cancellation (``edge.app``), so a dropped
connection cancels this handler at once; closing the bus stream then broadcasts Cancel and
the adapter stops before its next runner call. A failed write ends the stream the same way.

Shutdown. ``on_shutdown`` asks every open stream to stop: each ends without ``end``, so an
``EventSource`` reconnects (to another node) and resumes after its last id.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator

from aiohttp import web

from contracts.config import Config
from contracts.errors import BusgateError, BusUnavailable, DeadlineExceeded
from contracts.wire import Request, StreamStep
from edge import envelope, keys, sse
from edge.open_streams import Slot, client_key
from edge.responses import error_body

IDLE_MARGIN = 5.0
"""Seconds added to ``heartbeat + system timeout`` for bus latency and a loaded adapter."""


def idle_timeout(config: Config, system: str) -> float:
    """How long the edge waits for the next step (or keepalive) of a stream."""
    return config.systems[system].timeout + config.gateway.stream_heartbeat + IDLE_MARGIN


async def handle_stream(request: web.Request) -> web.StreamResponse:
    app = request.app
    config = app[keys.CONFIG]
    req = await envelope.build(request, config, "stream")
    slot = app[keys.STREAMS].open(client_key(req))
    try:
        return await _relay(request, req, slot)
    finally:
        slot.close()


async def _prepare(request: web.Request, req: Request) -> web.StreamResponse:
    response = web.StreamResponse(headers=sse.HEADERS)
    response.content_type = sse.CONTENT_TYPE
    gateway = request.app[keys.CONFIG].gateway
    if gateway.return_ids == "always":  # the ids middleware cannot add them once prepared
        response.headers[gateway.request_id_header] = req.id
        response.headers[gateway.trace_id_header] = request[keys.TRACE_ID]
    await response.prepare(request)
    return response


async def _relay(request: web.Request, req: Request, slot: Slot) -> web.StreamResponse:
    app = request.app
    config = app[keys.CONFIG]
    gateway = config.gateway
    loop = asyncio.get_running_loop()
    steps = app[keys.BUS].stream(req, idle_timeout=idle_timeout(config, req.system))
    stop_at = loop.time() + gateway.max_stream_duration if gateway.max_stream_duration else None
    heartbeat = gateway.stream_heartbeat if gateway.stream_heartbeat > 0 else None
    response: web.StreamResponse | None = None
    written = loop.time()
    # The next step is awaited in a task, so that a heartbeat or a stop does not cancel the
    # wait (cancelling it would close the bus stream).
    waiter: asyncio.Future[StreamStep] | None = None
    try:
        while True:
            if waiter is None:
                waiter = asyncio.ensure_future(_next(steps))
            due = stop_at
            if response is not None and heartbeat is not None:
                due = min(written + heartbeat, due or float("inf"))
            done, _ = await asyncio.wait(
                {waiter, slot.stopping},
                timeout=None if due is None else max(0.0, due - loop.time()),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if slot.stopping.done():
                if response is None:
                    raise BusUnavailable("this edge node is shutting down; try again")
                await response.write(sse.comment("edge node shutting down; reconnect"))
                return response
            if waiter not in done:
                if stop_at is not None and loop.time() >= stop_at:
                    raise DeadlineExceeded(
                        f"the stream reached its maximum duration of "
                        f"{gateway.max_stream_duration:g} s"
                    )
                assert response is not None
                await response.write(sse.comment())
                written = loop.time()
                continue
            step = waiter.result()  # raises the stream's error
            waiter = None
            chunk = sse.step(step.items, step.next)
            if step.last:
                chunk += sse.END
            if response is None:
                if not chunk:
                    continue  # a keepalive before the first step
                response = await _prepare(request, req)
            if chunk:
                await response.write(chunk)
                written = loop.time()
            if step.last:
                return response
    except BusgateError as exc:
        if response is None:
            raise  # not started: an ordinary JSON error
        with contextlib.suppress(ConnectionResetError):
            await response.write(sse.error(error_body(exc.code, exc.message, req.id)))
        return response
    except ConnectionResetError:
        # The client went away; the handler may still be running if it was not cancelled.
        assert response is not None
        return response
    finally:
        if waiter is not None:
            waiter.cancel()  # a no-op when it is done; awaiting it then retrieves its error
            with contextlib.suppress(asyncio.CancelledError, BusgateError):
                await waiter
        if isinstance(steps, AsyncGenerator):
            await steps.aclose()  # broadcasts Cancel unless the last step came


async def _next(steps: AsyncIterator[StreamStep]) -> StreamStep:
    try:
        return await anext(steps)
    except StopAsyncIteration:
        # Only after the last step, which ends the loop before asking again.
        raise BusUnavailable("the stream ended without its last step") from None
