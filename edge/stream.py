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
  ``heartbeat + the call's timeout`` seconds, whatever the wait, and the edge gives up on a
  silent stream after that plus :data:`IDLE_MARGIN` (50 s with the defaults), ending it
  with an error event: the adapter died or the bus lost the stream.
- Heartbeat and duration. One sweep per node (:func:`sweeper`, every ``heartbeat / 2`` s at
  most) writes a comment to each stream silent for ``gateway.stream_heartbeat`` seconds, to
  keep proxies and load balancers from closing it, and stops streams older than
  ``gateway.max_stream_duration`` (0 = no limit), which end with an error event
  (``deadline_exceeded``). An idle stream thus has no timer or task of its own: at 10,000
  streams, fewer long-lived objects mean shorter garbage-collector pauses for every stream.

Backpressure. The edge takes at most ``gateway.stream_buffer`` steps (and about
``stream_buffer_bytes``) ahead of its client: it asks the bus for the next step only once the
previous one is written, which is when aiohttp has handed it to a transport whose buffer is
below its high-water mark, and that is what grants the adapter its next credit
(``bus.flow``). A client that stops reading thus stops the saga's runner calls; one that
takes nothing for ``gateway.stream_stall_timeout`` seconds is disconnected, which cancels the
saga as a dropped connection does.

Client gone. The app enables aiohttp's handler cancellation (``edge.app``), so a dropped
connection cancels this handler at once; closing the bus stream then broadcasts Cancel and
the adapter stops before its next runner call. A failed write ends the stream the same way.

Stopping. The node stops a stream (:meth:`edge.open_streams.Slot.stop`) by cancelling its
handler while it waits for a step, or after its current write. ``on_shutdown`` stops every
open stream: each ends without ``end``, so an ``EventSource`` reconnects (to another node)
and resumes after its last id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncGenerator, AsyncIterator

from aiohttp import web

from busgate.contracts.config import Config, Gateway
from busgate.contracts.errors import BusgateError, BusUnavailable, DeadlineExceeded
from busgate.contracts.wire import Request
from busgate.edge import envelope, keys, sse
from busgate.edge.middleware.errors import shaped_error
from busgate.edge.open_streams import OpenStreams, Slot, client_key
from busgate.edge.rate_limit import RateLimited
from busgate.edge.resilience import with_headers
from busgate.edge.responses import shown_error

try:  # Linux: the socket's unsent and unacknowledged bytes (TIOCOUTQ = SIOCOUTQ)
    import fcntl
    import termios

    _SIOCOUTQ: int | None = termios.TIOCOUTQ if sys.platform == "linux" else None
except ImportError:  # pragma: no cover - not on Windows
    _SIOCOUTQ = None

log = logging.getLogger("busgate.edge.stream")

HEARTBEAT = sse.comment()

IDLE_MARGIN = 5.0
"""Seconds added to ``heartbeat + the call's timeout`` for bus latency and a loaded adapter."""


def idle_timeout(config: Config, channel: str, path: str = "") -> float:
    """How long the edge waits for the next step (or keepalive) of a stream: each runner
    call may take the call's timeout (``Config.timeout_for``)."""
    return config.timeout_for(channel, path) + config.gateway.stream_heartbeat + IDLE_MARGIN


async def handle_stream(request: web.Request) -> web.StreamResponse:
    app = request.app
    config = app[keys.LIVE].config  # this call's config to its end, whatever a refresh does
    guards = app[keys.GUARDS]
    policy = guards.policy(request)
    if not policy.empty:  # an open stream counts as one call
        try:
            await guards.limit(request, policy)
        except RateLimited as exc:
            refused = shaped_error(request, exc)
            return with_headers(refused, [exc.verdict])
    req = await envelope.build(request, config, "stream")
    slot = app[keys.STREAMS].open(client_key(req))
    try:
        return await _relay(request, req, slot, config)
    finally:
        slot.close()


async def _prepare(request: web.Request, req: Request, slot: Slot) -> web.StreamResponse:
    response = web.StreamResponse(headers=sse.HEADERS)
    response.content_type = sse.CONTENT_TYPE
    gateway = request.app[keys.CONFIG].gateway
    if gateway.return_ids == "always":  # the ids middleware cannot add them once prepared
        response.headers[gateway.request_id_header] = req.shown_id
        response.headers[gateway.trace_id_header] = request[keys.TRACE_ID]
    await response.prepare(request)
    slot.transport = request.transport
    slot.response = response
    return response


async def _relay(
    request: web.Request, req: Request, slot: Slot, config: Config
) -> web.StreamResponse:
    gateway = config.gateway
    steps = request.app[keys.BUS].stream(
        req,
        idle_timeout=idle_timeout(config, req.channel, req.path),
        window=gateway.stream_buffer,
        window_bytes=gateway.stream_buffer_bytes,
    )
    loop = asyncio.get_running_loop()
    try:
        while slot.reason is None:
            slot.waiting = True
            try:
                step = await anext(steps, None)
            except asyncio.CancelledError:
                if slot.reason is None:
                    raise  # the client went away: aiohttp cancels its handler
                _uncancel()  # the node stopped the stream (slot.stop)
                break
            finally:
                slot.waiting = False
            if step is None:  # only after the last step, which returns first
                raise BusUnavailable("the stream ended without its last step")
            chunk = sse.step(step.items, step.next)
            if step.last:
                chunk += sse.END
            if chunk:  # else a keepalive: nothing to write
                response = slot.response or await _prepare(request, req, slot)
                stall = gateway.stream_stall_timeout
                if not await _write(response, slot.transport, chunk, stall):
                    log.info(
                        "stream %s: the client took nothing for %g s; disconnected",
                        req.id,
                        stall,
                    )
                    if isinstance(steps, AsyncGenerator):
                        await steps.aclose()  # Cancel first: the abort cancels this handler
                    if request.transport is not None:
                        request.transport.abort()
                    return response
                slot.written = loop.time()
            if step.last:
                assert slot.response is not None
                return slot.response
        if slot.reason == "duration":
            raise DeadlineExceeded(
                f"the stream reached its maximum duration of "
                f"{config.gateway.max_stream_duration:g} s"
            )
        if slot.response is None:
            raise BusUnavailable("this edge node is shutting down; try again")
        # No `end`: an EventSource reconnects, to another node, and resumes.
        bye = sse.comment("edge node shutting down; reconnect")
        await _write(slot.response, slot.transport, bye, gateway.stream_stall_timeout)
        return slot.response
    except BusgateError as exc:
        if slot.response is None:
            raise  # not started: an ordinary JSON error
        levels = request.app[keys.ERROR_LEVELS]
        detail = levels.level(request) if levels else "full"  # edge.error_detail
        failed = sse.error(shown_error(exc, req.shown_id, detail) or b"{}")
        with contextlib.suppress(ConnectionResetError):
            await _write(slot.response, slot.transport, failed, gateway.stream_stall_timeout)
        return slot.response
    except ConnectionResetError:
        # The client went away (noticed by a write rather than by handler cancellation).
        assert slot.response is not None
        return slot.response
    finally:
        if isinstance(steps, AsyncGenerator):
            await steps.aclose()  # broadcasts Cancel unless the last step came


async def _write(
    response: web.StreamResponse, transport: asyncio.Transport | None, chunk: bytes, stall: float
) -> bool:
    """Write ``chunk``; False if the client took no byte for ``stall`` seconds (0 = never).

    A slow client that still reads is not stalled, however long the write takes: what it has
    not yet taken (:func:`unsent`) shrinks.
    """
    if stall <= 0 or transport is None:
        await response.write(chunk)
        return True
    write = asyncio.ensure_future(response.write(chunk))
    try:
        before = unsent(transport) + len(chunk)  # the write starts once this task waits
        while True:
            done, _ = await asyncio.wait([write], timeout=stall)
            if done:
                write.result()
                return True
            now = unsent(transport)
            if now >= before:
                return False
            before = now
    finally:
        if not write.done():
            write.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionResetError):
                await write


def unsent(transport: asyncio.Transport) -> int:
    """Bytes written to ``transport`` that its client has not acknowledged yet.

    The transport's own buffer plus, on Linux, the socket's send queue (``SIOCOUTQ``): the
    transport's buffer alone only moves when the kernel frees a good part of its send buffer,
    which at a slow client's pace can take longer than the stall timeout.
    """
    size = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if sock is not None and _SIOCOUTQ is not None:
        with contextlib.suppress(OSError, ValueError):
            queued = fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0")
            size += int.from_bytes(queued, sys.byteorder, signed=True)
    return size


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


def sweep_interval(gateway: Gateway) -> float:
    """How often the sweep runs: often enough for the heartbeat and the duration limit."""
    every = [1.0]
    if gateway.stream_heartbeat > 0:
        every.append(gateway.stream_heartbeat / 2)
    if gateway.max_stream_duration > 0:
        every.append(gateway.max_stream_duration / 10)
    return max(0.01, min(every))


async def sweep(streams: OpenStreams, gateway: Gateway) -> None:
    """One pass over the node's open streams: heartbeats and the duration limit.

    A comment goes to each stream silent for ``stream_heartbeat`` seconds or more, unless its
    connection still has unsent data (then it is not idle, and a write could block the sweep).
    """
    now = asyncio.get_running_loop().time()
    heartbeat, longest = gateway.stream_heartbeat, gateway.max_stream_duration
    for slot in streams:
        if slot.closed or slot.reason is not None:
            continue
        if longest > 0 and now - slot.opened >= longest:
            slot.stop("duration")
            continue
        transport = slot.transport
        if (
            heartbeat <= 0
            or slot.response is None
            or now - slot.written < heartbeat
            or transport is None
            or transport.is_closing()
            or transport.get_write_buffer_size()
        ):
            continue
        slot.written = now
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await slot.response.write(HEARTBEAT)


async def sweeper(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx`` of the edge app: runs :func:`sweep` for the app's whole life."""
    streams, gateway = app[keys.STREAMS], app[keys.CONFIG].gateway
    interval = sweep_interval(gateway)

    async def forever() -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await sweep(streams, gateway)
            except Exception:  # a bug here must not end heartbeats for good
                log.exception("stream sweep failed")

    task = asyncio.ensure_future(forever())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
