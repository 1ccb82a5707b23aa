"""The bus interface, with all transport-independent behaviour.

A transport only moves bytes: it implements ``connect``/``close``, ``_send``, ``_send_command``
and the ``_listen_*`` subscriptions. Correlation, deadlines, fail-fast on absent adapters,
cancellation and presence are here, so NATS and Kafka behave the same.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from busgate.bus import headers as hdr
from busgate.bus import limits
from busgate.bus.correlation import Pending
from busgate.bus.flow import Credits, Window
from busgate.bus.naming import Names
from busgate.bus.presence import PresenceView
from busgate.contracts.codec import decode, encode
from busgate.contracts.errors import (
    BusgateError,
    BusUnavailable,
    DeadlineExceeded,
    MessageTooLarge,
    NoResponders,
    Remote,
    ReplyTooLarge,
)
from busgate.contracts.wire import (
    Cancel,
    Credit,
    Message,
    Presence,
    Refresh,
    Refreshed,
    Reply,
    Request,
    StreamStep,
)

if TYPE_CHECKING:
    from busgate.bus.observe import CallObserver

log = logging.getLogger("busgate.bus")

CANCEL_MEMORY = 60.0
"""Seconds an adapter remembers a Cancel whose request it has not seen."""
CANCEL_MEMORY_SIZE = 10_000

NO_RESPONDERS_GRACE = 0.25
"""Seconds a call keeps retrying a "no responders" answer while the presence view shows a
live adapter for its system. nats-server may answer so for a moment right after an adapter
subscribed (seen about once in 100 fresh setups, although the adapter flushed its
subscription); a client should not get a 503 for that. With no live adapter a call still
fails at once."""
NO_RESPONDERS_BACKOFF = (0.005, 0.01, 0.02, 0.04, 0.08)
"""Pauses between those retries, seconds; the last one repeats until the grace is over."""

Handler = Callable[[Request, "Responder"], Awaitable[None]]

_NO_HEADERS: dict[str, str] = {}
"""Replies and steps carry no bus headers: on NATS the reply subject names the request, on
Kafka the request id is inside the message (keyed by adapter, so a stream's steps keep their
order), and parsing headers is a measurable part of an edge's work."""


class ReplySpans(Protocol):
    """Where a Responder gets the call's spans for its Reply (a node's span export,
    ``bus.trace_export.BusSpanProcessor``)."""

    def reply_spans(self, responder: Responder) -> tuple[bytes, bytes]:
        """Called once the reply's status is known (``failure`` set), just before it goes:
        ends the call's span and returns what the Reply carries of the call's spans
        (``Reply.served``, ``Reply.spans``; b"": none)."""
        ...

    def unsent(self, responder: Responder, spans: bytes) -> None:
        """The spans from :meth:`reply_spans` did not fit in the Reply (the bus's limit):
        published by the node itself instead (``spans``: those for ``Reply.spans``)."""
        ...


class Responder:
    """How an adapter answers one request: a reply, or a sequence of stream steps.

    An answer larger than the bus carries is not sent: a small ``reply_too_large`` error
    goes in its place (a 502, or an error event that ends the stream), so neither the
    handler nor the waiting client is left hanging.
    """

    __slots__ = (
        "_bus",
        "_cancelled",
        "_credit_to",
        "_ended",
        "_seq",
        "credits",
        "failure",
        "request",
        "span",
        "span_export",
    )

    def __init__(self, bus: Bus, request: Request) -> None:
        self._bus = bus
        self.request = request
        self._cancelled: asyncio.Event | None = None
        self._seq = 0
        self._ended = False
        self.credits = Credits(request.credits)
        """How far the edge can take this stream's steps (see ``bus.flow``)."""
        self._credit_to = bus.reply_address(request.id) if request.credits > 0 else ""
        self.failure = ""
        """The error code this request was answered with, if any (its span's status)."""
        self.span_export: ReplySpans | None = None
        """The node's span export, when the Request asked for the call's spans in its Reply
        (``spans_in_reply``; see ``bus.trace_export``). One object for every call of a node
        (no closure per call)."""
        self.span: Any = None
        """The call's span, for ``span_export``."""

    @property
    def cancelled(self) -> asyncio.Event:
        """Set when the edge sends Cancel for this request (the client went away), or when
        the stream ended here because a step was too large for the bus. Made on first use:
        a plain request never asks, and an Event per request was ~1 µs of the adapter's."""
        if self._cancelled is None:
            self._cancelled = asyncio.Event()
        return self._cancelled

    def may_step(self) -> bool:
        """Whether the edge can take one more step now (always, without flow control)."""
        return self.credits.allows(self._seq + 1)

    async def credit(self) -> bool:
        """Wait until the edge can take one more step: True, or False once cancelled."""
        return await self.credits.wait(self._seq + 1, self.cancelled)

    def _too_large(self, what: str, size: int) -> ReplyTooLarge:
        system, limit = self.request.system, self._bus.max_message
        log.warning(
            "%s of %s for %s: %d bytes, over the bus's %d",
            what,
            system,
            self.request.id,
            size,
            limit,
        )
        return ReplyTooLarge(
            f"the {what} of system {system!r} ({size} bytes) is larger than the bus carries"
            f" ({limit} bytes)"
        )

    async def reply(self, reply: Reply) -> None:
        if reply.error is not None:
            self.failure = reply.error.code
        if self.span_export is not None:
            reply, data = self._with_spans(reply, self.span_export)
        else:
            data = encode(reply)
        try:
            await self._bus._send(self.request.reply_to, data, _NO_HEADERS)
        except MessageTooLarge:
            error = self._too_large("answer", len(data))
            self.failure = error.code
            small = Reply(id=reply.id, status=error.status, error=error.to_wire())
            await self._bus._send(self.request.reply_to, encode(small), _NO_HEADERS)

    def _with_spans(self, reply: Reply, export: ReplySpans) -> tuple[Reply, bytes]:
        """The reply with the call's spans, encoded once when its body is well within the
        bus's limit (the usual case). Otherwise one too large for the bus is replaced by its
        error first, so the spans say ``reply_too_large``; spans that would take the reply
        over the limit go back to ``export``, which publishes them itself."""
        self.span_export = None
        limit = self._bus.max_message
        data = b""
        if limit and len(reply.body) > limit // 2:  # may not fit: checked before the spans
            data = encode(reply)
            if len(data) > limit:
                error = self._too_large("answer", len(data))
                self.failure = error.code
                reply = Reply(id=reply.id, status=error.status, error=error.to_wire())
                data = encode(reply)
        served, spans = export.reply_spans(self)
        if served or spans:
            carrying = encode(msgspec.structs.replace(reply, served=served, spans=spans))
            if not limit or len(carrying) <= limit:
                return reply, carrying
            export.unsent(self, spans)
        return reply, data or encode(reply)

    async def step(
        self,
        items: list[bytes],
        *,
        next: str | None = None,
        last: bool = False,
        error: BusgateError | None = None,
    ) -> None:
        """Send one step; after a step too large for the bus (which ended the stream with an
        error), further steps are dropped."""
        if self._ended:
            return
        if error is not None:
            self.failure = error.code
        self._seq += 1
        step = StreamStep(
            id=self.request.id,
            seq=self._seq,
            items=items,
            next=next,
            last=last,
            error=error.to_wire() if error else None,
            credit_to=self._credit_to,
        )
        data = encode(step)
        try:
            await self._bus._send(self.request.reply_to, data, _NO_HEADERS)
        except MessageTooLarge:
            self._ended = True
            self.cancelled.set()  # a saga loop stops before its next runner call
            failed = self._too_large("stream step", len(data)).to_wire()
            self.failure = failed.code
            end = StreamStep(id=self.request.id, seq=self._seq, last=True, error=failed)
            await self._bus._send(self.request.reply_to, encode(end), _NO_HEADERS)


class Bus(abc.ABC):
    requires_presence: bool = True
    """Whether a request needs a live Presence for its system before it is sent; NATS
    learns about absent adapters from the server itself ("no responders")."""

    def __init__(self, *, node: str, prefix: str = "busgate") -> None:
        self.node = node
        self.names = Names(prefix)
        self.pending = Pending()
        self.presence = PresenceView()
        self._inflight: dict[str, Responder] = {}
        self._idle = asyncio.Event()
        """Set whenever no handler is running (``drain`` waits for it)."""
        self._idle.set()
        self._cancelled: OrderedDict[str, float] = OrderedDict()
        """Cancels that arrived before their request (an adapter's view; see ``_remember``)."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._handler: Handler | None = None
        self._served: tuple[str, ...] = ()
        self._capacity = 0
        self._ttl = 6.0
        """The TTL of this adapter's last heartbeat, for announcements between beats."""
        self.dropped_expired = 0
        """Requests an adapter received after their deadline, and so never started."""
        self.on_refresh: Callable[[Refresh], Awaitable[Refreshed]] | None = None
        """How this node re-reads its config when a Refresh comes (None: it ignores them)."""
        self._refreshes: dict[str, asyncio.Queue[Refreshed]] = {}

    # -- what a transport implements ------------------------------------------------

    @abc.abstractmethod
    async def connect(self) -> None:
        """Connect, subscribe to this node's replies and to the control subject."""

    @abc.abstractmethod
    async def _close_transport(self) -> None: ...

    @property
    @abc.abstractmethod
    def connected(self) -> bool: ...

    max_message: int = 0
    """The largest encoded message this bus sends, bytes; 0 = no known limit. A transport
    sets it when it learns its limit and refuses a larger message with ``MessageTooLarge``
    (see ``bus.limits``). An attribute, not a property: it is read on every edge call."""

    def body_limit(self, max_body: int) -> int:
        """The largest request body an edge on this bus accepts (``gateway.max_body``, or
        less when the bus carries less); ``limits.body_limit``, inlined."""
        carried = self.max_message
        if not carried or max_body <= (room := carried - limits.ENVELOPE_ROOM):
            return max_body
        return max(room, 0)

    @abc.abstractmethod
    def reply_address(self, request_id: str) -> str:
        """Where an adapter sends the replies to ``request_id``."""

    @abc.abstractmethod
    async def _send(
        self, dest: str, data: bytes, headers: dict[str, str], *, reply: str = ""
    ) -> None:
        """Hand one message to the transport; raise BusUnavailable when it cannot."""

    @abc.abstractmethod
    async def publish_command(
        self, name: str, data: bytes, headers: dict[str, str] | None = None
    ) -> None:
        """Publish durably: return only once the broker has acknowledged the message."""

    @abc.abstractmethod
    async def _listen_requests(self, system: str) -> None:
        """Join the system's queue/consumer group; feed each message to ``_on_request``."""

    @abc.abstractmethod
    async def _stop_requests(self) -> None:
        """Leave the request groups; the requests already received are still handed on."""

    async def _stop_requests_for(self, systems: tuple[str, ...]) -> None:  # noqa: B027
        """Leave the request groups of ``systems`` only (a config refresh removed them); the
        requests already received are still handed on. Transports override it."""

    # -- callbacks for transports -------------------------------------------------------

    def _decode(self, data: bytes) -> Message | None:
        """A message, or None (counted) for bytes no version of busgate could have sent."""
        try:
            return decode(data)
        except msgspec.DecodeError:
            self.pending.counters.undecodable += 1
            return None

    def _on_reply(self, data: bytes) -> None:
        msg = self._decode(data)
        if isinstance(msg, Reply):
            self.pending.resolve(msg)
        elif isinstance(msg, StreamStep):
            self.pending.step(msg)
        elif isinstance(msg, Credit) and (responder := self._inflight.get(msg.id)) is not None:
            responder.credits.grant(msg.limit)
        elif isinstance(msg, Refreshed) and (answers := self._refreshes.get(msg.id)) is not None:
            answers.put_nowait(msg)

    def _on_control(self, data: bytes) -> None:
        msg = self._decode(data)
        if isinstance(msg, Presence):
            self.presence.update(msg)
        elif isinstance(msg, Cancel):
            responder = self._inflight.get(msg.id)
            if responder is not None:
                responder.cancelled.set()
            elif self._served:
                self._remember_cancel(msg.id)
        elif isinstance(msg, Refresh) and self.on_refresh is not None:
            self._spawn(self._refresh(msg, self.on_refresh))

    async def _refresh(
        self, msg: Refresh, refresh: Callable[[Refresh], Awaitable[Refreshed]]
    ) -> None:
        answer = await refresh(msg)
        with contextlib.suppress(BusgateError):
            await self._send(msg.reply_to, encode(answer), _NO_HEADERS)

    async def refresh_all(
        self, component: str = "", name: str = "", *, wait: float = 1.0, expect: int = 0
    ) -> list[Refreshed]:
        """Ask every node to re-read its config; the answers that came within ``wait``
        seconds (sooner once ``expect`` nodes answered)."""
        ask = Refresh(id=uuid.uuid4().hex, reply_to="", component=component, name=name)
        ask = msgspec.structs.replace(ask, reply_to=self.reply_address(ask.id))
        answers: asyncio.Queue[Refreshed] = asyncio.Queue()
        self._refreshes[ask.id] = answers
        got: list[Refreshed] = []
        try:
            await self._send(self.names.control, encode(ask), {})
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    while not expect or len(got) < expect:
                        got.append(await answers.get())
        finally:
            del self._refreshes[ask.id]
        return got

    def _remember_cancel(self, request_id: str) -> None:
        """Keep a Cancel whose request has not arrived (yet).

        Requests and Cancels travel on different subjects/topics, so on Kafka a Cancel can
        overtake its request; the request is then dropped on arrival. Bounded in time and size:
        most remembered ids are requests another adapter of the group serves.
        """
        now = time.monotonic()
        self._cancelled[request_id] = now + CANCEL_MEMORY
        while self._cancelled and (
            len(self._cancelled) > CANCEL_MEMORY_SIZE or next(iter(self._cancelled.values())) < now
        ):
            self._cancelled.popitem(last=False)

    def _on_request(self, data: bytes) -> None:
        req = self._decode(data)
        if not isinstance(req, Request) or self._handler is None:
            return
        if req.deadline and time.time() >= req.deadline:
            self.dropped_expired += 1
            return
        if self._cancelled.pop(req.id, None) is not None:
            return
        responder = Responder(self, req)
        # Registered now, not in the task: a Cancel may be handled before the task runs.
        self._inflight[req.id] = responder
        self._idle.clear()
        self._spawn(self._handle(req, responder))

    async def _handle(self, req: Request, responder: Responder) -> None:
        assert self._handler is not None
        try:
            await self._handler(req, responder)
        except Exception:
            log.exception("handler failed for %s", req.id)
        finally:
            self._inflight.pop(req.id, None)
            if not self._inflight:
                self._idle.set()

    async def publish_event(
        self, dest: str, data: bytes, headers: dict[str, str] | None = None
    ) -> None:
        """An event for whoever listens (audit): sent once, answered by nobody. Raises
        BusUnavailable or MessageTooLarge as a request would."""
        await self._prepare_topic(dest)
        await self._send(dest, data, headers or {})

    def audit_address(self, channel: str) -> str:
        """Where a channel's audit events go (NATS: a subject per channel)."""
        return self.names.audit(channel)

    async def _prepare_topic(self, dest: str) -> None:  # noqa: B027 - Kafka creates topics
        """Make ``dest`` exist before the first message goes there."""

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the edge side ----------------------------------------------------------------

    def _check_ready(self, system: str) -> None:
        if not self.connected:
            raise BusUnavailable("the message bus is not connected; try again shortly")
        if self.requires_presence and not self.presence.serves(system):
            raise NoResponders(f"no adapter serves system {system!r}")

    def _retry_delay(self, req: Request, attempt: int, first: float) -> float | None:
        """The pause before sending ``req`` again after "no responders", or None to give up:
        no live adapter in the presence view, the grace spent, or the deadline too near."""
        if not self.presence.serves(req.system):
            return None
        delay = NO_RESPONDERS_BACKOFF[min(attempt, len(NO_RESPONDERS_BACKOFF) - 1)]
        now = time.monotonic()
        if now + delay - first > NO_RESPONDERS_GRACE:
            return None
        if req.deadline and time.time() + delay >= req.deadline:
            return None
        return delay

    async def request(self, req: Request) -> Reply:
        """Send ``req`` to its system's adapters and wait for the Reply until its deadline."""
        self._check_ready(req.system)
        if not req.reply_to:
            req = msgspec.structs.replace(req, reply_to=self.reply_address(req.id))
        dest, data, headers = self.names.request(req.system), encode(req), hdr.for_request(req)
        attempt, first = 0, 0.0
        while True:
            fut = self.pending.expect_reply(req.id, req.deadline)  # fails it past the deadline
            try:
                await self._send(dest, data, headers, reply=req.reply_to)
                try:
                    return await fut
                except TimeoutError:
                    raise DeadlineExceeded(
                        f"no reply from system {req.system!r} before the deadline"
                    ) from None
                except NoResponders:
                    first = first or time.monotonic()
                    delay = self._retry_delay(req, attempt, first)
                    if delay is None:
                        raise
            finally:
                self.pending.discard(req.id)
            await asyncio.sleep(delay)
            attempt += 1

    async def stream(
        self, req: Request, *, idle_timeout: float, window: int = 0, window_bytes: int = 0
    ) -> AsyncIterator[StreamStep]:
        """Send ``req`` and yield its StreamSteps until the last one.

        Raises the step's error when the stream fails. Closing the iterator early (the client
        went away) broadcasts a Cancel so the adapter stops the saga loop.

        Flow control: with ``window`` > 0 the adapter sends at most that many steps (fewer when
        they are large, see ``bus.flow.Window``) beyond the one the caller last took; asking for
        the next step says the previous one is handed on, and grants more.
        """
        self._check_ready(req.system)
        if not req.reply_to:
            req = msgspec.structs.replace(req, reply_to=self.reply_address(req.id))
        flow = Window(window, window_bytes) if window > 0 else None
        if flow is not None:
            req = msgspec.structs.replace(req, credits=flow.granted)
        # Beyond a window of steps (plus the last, sent without credit) an adapter ignores
        # the credits; the slack covers one that predates them, on a client that keeps up.
        queue = self.pending.expect_stream(req.id, 2 * window + 2 if flow is not None else 0)
        finished = False
        dest, data, headers = self.names.request(req.system), encode(req), hdr.for_request(req)
        attempt, first, heard = 0, 0.0, False
        try:
            await self._send(dest, data, headers, reply=req.reply_to)
            while True:
                try:
                    async with asyncio.timeout(idle_timeout):
                        item = await queue.get()
                except TimeoutError:
                    raise DeadlineExceeded(
                        f"no stream step from system {req.system!r} within {idle_timeout:g} s"
                    ) from None
                if isinstance(item, BusgateError):
                    if isinstance(item, NoResponders) and not heard:
                        first = first or time.monotonic()
                        delay = self._retry_delay(req, attempt, first)
                        if delay is not None:
                            await asyncio.sleep(delay)
                            attempt += 1
                            await self._send(dest, data, headers, reply=req.reply_to)
                            continue
                    finished = isinstance(item, NoResponders)
                    raise item
                heard = True
                if item.error is not None:
                    finished = True
                    raise Remote(item.error)
                finished = item.last
                yield item
                if item.last:
                    return
                if flow is not None and item.credit_to:
                    limit = flow.handed_on(item.seq, sum(map(len, item.items)))
                    if limit is not None:
                        self._spawn(self._credit(item.credit_to, Credit(id=req.id, limit=limit)))
        finally:
            self.pending.discard(req.id)
            if not finished:
                with contextlib.suppress(BusgateError):
                    await self.cancel(req.id)

    async def _credit(self, dest: str, credit: Credit) -> None:
        """Sent aside, not awaited by the stream: on Kafka a send waits for the broker's ack."""
        with contextlib.suppress(BusgateError):
            await self._send(dest, encode(credit), _NO_HEADERS)

    def observe(self, observer: CallObserver) -> None:
        """Send this node's ``request`` and ``stream`` calls through ``observer`` (spans,
        metrics). Installed on the instance, so a node that observes nothing pays nothing."""
        inner_request, inner_stream = self.request, self.stream
        self.request = functools.partial(observer.request, inner_request)  # type: ignore[method-assign]
        self.stream = functools.partial(observer.stream, inner_stream)  # type: ignore[method-assign]

    async def publish_track(self, channel: str, batch: list[bytes]) -> None:
        """Tracking events (encoded ``Request``s of kind ``track``) to ``PREFIX.track.CHANNEL``
        (NATS) / topic ``PREFIX.track`` (Kafka); raises BusUnavailable."""
        dest = await self._track_destination(channel)
        for data in batch:
            await self._send(dest, data, {hdr.KIND: "track"})

    async def _track_destination(self, channel: str) -> str:
        return self.names.track(channel)

    async def cancel(self, request_id: str, reason: str = "client went away") -> None:
        await self._send(self.names.control, encode(Cancel(id=request_id, reason=reason)), {})

    # -- the adapter side -------------------------------------------------------------

    async def serve(self, systems: Iterable[str], handler: Handler, *, capacity: int = 0) -> None:
        """Take requests for ``systems`` (shared with the other adapters of each system)."""
        self._handler = handler
        self._served = tuple(systems)
        self._capacity = capacity
        await self._listen_all(self._served)
        await self.announce()

    async def _listen_all(self, systems: tuple[str, ...]) -> None:
        """Start listening for every system at once: on Kafka each is a consumer group
        whose join takes the broker's rebalance delay (about 3 s on Tansu); one after the
        other, an adapter of four systems took 12 s to start, together 3 s."""
        await asyncio.gather(*(self._listen_requests(system) for system in systems))

    async def serve_more(self, systems: Iterable[str]) -> None:
        """Also take requests for ``systems`` (a config refresh added them), with the
        handler given to ``serve``."""
        new = tuple(s for s in systems if s not in self._served)
        await self._listen_all(new)
        self._served = (*self._served, *new)
        if new:
            await self.announce(self._ttl)

    async def stop_serving_systems(self, systems: Iterable[str]) -> None:
        """Take no more requests for ``systems``: announce without them first, so edges stop
        sending, then leave their groups; calls in hand go on to their end."""
        gone = tuple(s for s in systems if s in self._served)
        if not gone:
            return
        self._served = tuple(s for s in self._served if s not in gone)
        if self.connected:
            with contextlib.suppress(BusgateError):
                await self.announce(self._ttl)
        await self._stop_requests_for(gone)

    async def announce(self, ttl: float = 6.0) -> None:
        """Broadcast this adapter's Presence; ttl=0 says goodbye."""
        if ttl > 0:
            self._ttl = ttl
        beat = Presence(
            node=self.node,
            systems=self._served,
            capacity=self._capacity,
            ttl=ttl,
            partitions=self._held_partitions() if ttl > 0 else {},
        )
        await self._send(self.names.control, encode(beat), {})

    def _held_partitions(self) -> dict[str, tuple[int, ...]]:
        """What a partitioned transport tells edges in Presence (see ``Presence.partitions``)."""
        return {}

    async def announce_forever(self, interval: float = 2.0, ttl: float = 6.0) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.announce(ttl)
            except BusgateError:
                log.warning("presence heartbeat not sent: bus unavailable")

    async def stop_serving(self) -> None:
        """Take no more requests: say goodbye, then leave the queue/consumer groups, so the
        other adapters of each system get what this one would have been sent."""
        if not self._served:
            return
        if self.connected:
            with contextlib.suppress(BusgateError):
                await self.announce(ttl=0)
        self._served = ()
        await self._stop_requests()

    async def drain(self, grace: float = 10.0) -> None:
        """Graceful shutdown of an adapter: stop taking requests, then give the ones in hand
        up to ``grace`` seconds to finish, so a rolling restart loses none."""
        await self.stop_serving()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._idle.wait()

    async def close(self) -> None:
        if self._served and self.connected:
            with contextlib.suppress(Exception):
                await self.announce(ttl=0)
        for task in list(self._tasks):
            task.cancel()
        self.pending.close(BusUnavailable("the bus connection is closing"))
        await self._close_transport()
