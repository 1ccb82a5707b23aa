"""The bus-native runner kit: a runner that consumes its system's requests from the bus itself.

A ``type = "bus"`` system has no adapter: the runner joins the system's queue group (NATS) or
consumer group (Kafka) on ``PREFIX.req.SYSTEM``, answers on the Request's ``reply_to`` with the
contracts' envelopes, and announces Presence like an adapter so edges still fail fast (503)
when no runner is up. Built on FastStream (the design's choice), so the same code runs on NATS
and Kafka, and a runner can be tested with FastStream's ``TestNatsBroker`` without a broker::

    runner = Runner("orders")

    @runner.saga("create")
    async def create(parameters: dict, meta: Meta) -> dict: ...

    @runner.stream("feed")
    async def feed(parameters: dict, meta: Meta, previous: str | None) -> Step: ...

    runner.run()  # until SIGTERM/SIGINT, then drains
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

import msgspec
from aiokafka.errors import MessageSizeTooLargeError
from faststream.kafka import KafkaBroker
from faststream.nats import NatsBroker
from faststream.security import BaseSecurity
from nats.aio.client import Client as NatsClient
from nats.errors import MaxPayloadError

from busgate.bus import parse_url
from busgate.bus import tracing as tr
from busgate.bus.base import CANCEL_MEMORY, CANCEL_MEMORY_SIZE
from busgate.bus.flow import Credits
from busgate.bus.naming import Names
from busgate.bus.security import BusTls, context_for, kafka_client
from busgate.contracts.codec import decode, encode, json_decode, json_encode
from busgate.contracts.config import Telemetry
from busgate.contracts.errors import (
    BadRequest,
    BusgateError,
    DeadlineExceeded,
    NotFound,
    ReplyTooLarge,
)
from busgate.contracts.wire import (
    Cancel,
    Credit,
    Identity,
    Presence,
    Reply,
    Request,
    StreamStep,
)

if TYPE_CHECKING:
    from busgate.bus.trace_export import TraceSink

log = logging.getLogger("busgate.runner")

DEFAULT_BUS = "nats://127.0.0.1:4222"
STOP_WAIT = 5.0
"""Seconds each step of closing the bus connection may take on stop."""
JSON_HEADERS = {"content-type": "application/json"}
SAGA = "busgate.saga"
"""Attribute of a bus-native runner's CONSUMER span: the saga's path (``busgate trace``
shows the span as the runner hop)."""


@dataclass(frozen=True, slots=True)
class Meta:
    """What a saga knows about its call besides the parameters."""

    request_id: str
    system: str
    path: str
    channel: str = ""
    method: str = "POST"
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    identity: Identity | None = None
    traceparent: str = ""
    deadline: float = 0.0
    """Absolute, seconds since the epoch (0 = none); the kit stops the saga there."""
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the client went away (a stream's Cancel): a long saga may check it."""


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a stream: its items; ``next`` is the cursor for the following call (None
    ends the stream); ``wait`` seconds pass before that call."""

    items: list[Any]
    next: str | None = None
    wait: float = 0.0


Saga: TypeAlias = Callable[[dict[str, Any], Meta], Awaitable[Any]]
StreamSaga: TypeAlias = Callable[[dict[str, Any], Meta, str | None], Awaitable[Step]]
Broker: TypeAlias = NatsBroker | KafkaBroker


def _parameters(body: bytes) -> dict[str, Any]:
    """The JSON body as a dict (a non-object is ``{"value": …}``), like an RPC runner's."""
    if not body:
        return {}
    try:
        value = json_decode(body)
    except (msgspec.DecodeError, RecursionError):
        raise BadRequest("the body is not JSON") from None
    return value if isinstance(value, dict) else {"value": value}


class _Ended(Exception):
    """A stream ended early: its step was too large, and an error step went instead."""


class _Call:
    """One request in hand: its cancel flag and, for streams, its credits."""

    __slots__ = ("credits", "meta", "span")

    def __init__(self, req: Request, meta: Meta, span: tr.Span | None) -> None:
        self.meta = meta
        self.credits = Credits(req.credits)
        self.span = span
        """The call's CONSUMER span, when it is traced."""


class Runner:
    """A bus-native runner of one system (see the module docstring).

    ``bus``: ``nats://…`` or ``kafka://…``; default ``$BUSGATE_BUS``, else a local NATS.
    ``telemetry``: the gateway's ``[telemetry]``; with tracing on, each traced call is a
    CONSUMER span (continuing the Request's ``traceparent``, whose context the saga gets in
    ``meta.traceparent``), exported as the adapters' are: in the Reply when the edge asks
    for it, else onto the bus (``busgate trace`` shows the runner hop), and over OTLP.
    """

    def __init__(
        self,
        system: str,
        *,
        bus: str | None = None,
        prefix: str | None = None,
        node: str | None = None,
        capacity: int = 1000,
        presence_interval: float = 2.0,
        presence_ttl: float = 6.0,
        credit_timeout: float = 60.0,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.system = system
        self.url = bus or os.environ.get("BUSGATE_BUS") or DEFAULT_BUS
        self.names = Names(prefix or os.environ.get("BUSGATE_PREFIX") or "busgate")
        self.node = node or f"{system}-runner-{secrets.token_hex(3)}"
        self.capacity = capacity
        self.presence_interval = presence_interval
        self.presence_ttl = presence_ttl
        self.credit_timeout = credit_timeout
        """Seconds a stream waits for the edge's credit before taking the edge for gone."""
        self.sagas: dict[str, Saga] = {}
        self.streams: dict[str, StreamSaga] = {}
        self._calls: dict[str, _Call] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._serving = False
        self._beat: asyncio.Task[None] | None = None
        self._assigned = asyncio.Event()
        self._requests: Any = None
        self._nc: NatsClient | None = None
        self._held: tuple[int, ...] | None = None
        self._early_cancels: OrderedDict[str, float] = OrderedDict()
        """Kafka: the request-topic partitions this runner holds (None: not known)."""
        self.scheme, self.servers, options = parse_url(self.url)
        self.tls: BusTls | None = options.get("tls")
        """TLS to the bus (``tls://``, ``kafka+ssl://``), as the adapters have it."""
        self.reply_topic = self.names.reply(self.node)
        self.telemetry = telemetry
        self.tracing = (
            tr.Tracing(telemetry, service=telemetry.runner_service, node=self.node)
            if telemetry is not None and telemetry.tracing
            else None
        )
        self.consumer = tr.Messaging(self.scheme, self.names, "process")
        self.broker: Broker = self._build()

    # -- what a runner author writes -------------------------------------------------

    def saga(self, name: str) -> Callable[[Saga], Saga]:
        """Register ``/api/request/CHANNEL/NAME``: its return value is the JSON answer."""

        def register(fn: Saga) -> Saga:
            self.sagas[name.strip("/")] = fn
            return fn

        return register

    def stream(self, name: str) -> Callable[[StreamSaga], StreamSaga]:
        """Register ``/api/stream/CHANNEL/NAME``: called once per step with the previous
        step's ``next`` cursor (at first the client's ``Last-Event-ID``)."""

        def register(fn: StreamSaga) -> StreamSaga:
            self.streams[name.strip("/")] = fn
            return fn

        return register

    @property
    def inflight(self) -> int:
        """Calls in hand: requests and streams whose saga has not finished."""
        return len(self._calls)

    async def idle(self) -> None:
        """Return once no call is in hand."""
        await self._idle.wait()

    def asyncapi(self) -> dict[str, Any]:
        """This runner's AsyncAPI document (FastStream's, with busgate's envelopes as the
        payloads): what it consumes. Its replies go to each Request's ``reply_to``."""
        from busgate.bus.asyncapi import document

        messages: dict[str, tuple[type[msgspec.Struct], ...]] = {
            self.names.request(self.system): (Request,),
            self.names.control: (Cancel, Presence),
            self._credit_title: (Credit,),
        }
        about = (
            f"Bus-native runner of system {self.system!r}: sagas {sorted(self.sagas)},"
            f" streams {sorted(self.streams)}. It answers each Request on its reply_to with"
            " a Reply, or StreamSteps."
        )
        return document(
            self.broker, messages, title=f"busgate runner {self.system}", description=about
        )

    @property
    def _credit_title(self) -> str:
        suffix = ".{request}" if self.scheme == "nats" else ""
        return self.names.reply("{runner}") + suffix

    # -- FastStream wiring -----------------------------------------------------------

    def _security(self) -> BaseSecurity | None:
        """The bus's TLS context (shared and rotated as ``bus.security`` says), or None."""
        if self.tls is None:
            return None
        return BaseSecurity(ssl_context=context_for(self.tls), use_ssl=True)

    def _build(self) -> Broker:
        request = self.names.request(self.system)
        about = f"Requests for system {self.system!r} (busgate Request, MessagePack)"
        broker: Broker
        if self.scheme == "nats":
            nats = NatsBroker(
                self.servers, logger=None, apply_types=False, security=self._security()
            )
            self._requests = nats.subscriber(
                request,
                queue=self.names.group(self.system),
                no_reply=True,
                title=request,
                description=about,
            )
            self._requests(self._on_request)
            nats.subscriber(
                self.names.control,
                no_reply=True,
                title=self.names.control,
                description="Cancel, Presence",
            )(self._on_control)
            nats.subscriber(
                self.reply_topic + ".>",
                no_reply=True,
                title=self._credit_title,
                description="Credit messages for this runner's streams",
            )(self._on_credit)
            broker = nats
        else:
            from aiokafka import ConsumerRebalanceListener

            runner = self

            class Joined(ConsumerRebalanceListener):  # type: ignore[misc]
                """Keeps the partitions this runner holds, for its Presence (edges send
                only to partitions a live runner holds, as with adapters)."""

                async def on_partitions_revoked(self, revoked: Any) -> None:
                    runner._held = None  # between assignments: edges use every partition

                async def on_partitions_assigned(self, partitions: Any) -> None:
                    runner._held = tuple(sorted(tp.partition for tp in partitions))
                    runner._assigned.set()
                    if runner._beat is not None:  # serving already: tell the edges now
                        with contextlib.suppress(Exception):
                            await runner.announce()

            kafka = KafkaBroker(
                self.servers, logger=None, apply_types=False, security=self._security()
            )
            self._requests = kafka.subscriber(
                request,
                group_id=self.names.group(self.system),
                auto_offset_reset="latest",
                listener=Joined(),
                no_reply=True,
                title=request,
                description=about,
            )
            self._requests(self._on_request)
            kafka.subscriber(
                self.names.control,
                no_reply=True,
                title=self.names.control,
                description="Cancel, Presence",
            )(self._on_control)
            kafka.subscriber(
                self.reply_topic,
                no_reply=True,
                title=self._credit_title,
                description="Credit messages for this runner's streams",
            )(self._on_credit)
            broker = kafka
        return broker

    async def _publish(self, dest: str, data: bytes) -> None:
        if self._nc is not None:
            # Straight on the NATS client FastStream connected: its own publish builds a
            # correlation id and runs a middleware chain per reply, which cost about as much
            # as the rest of answering an echo (profiled, 64 calls in flight).
            await self._nc.publish(dest, data)
        elif isinstance(self.broker, NatsBroker):
            await self.broker.publish(data, dest)
        else:
            # Keyed by node, like an adapter's: a stream's steps stay in one partition.
            await self.broker.publish(data, dest, key=self.node.encode())

    async def _on_control(self, body: bytes) -> None:
        msg = _decoded(body)
        if isinstance(msg, Cancel):
            if (call := self._calls.get(msg.id)) is not None:
                call.meta.cancelled.set()
            else:
                self._remember_cancel(msg.id)

    def _remember_cancel(self, request_id: str) -> None:
        """Keep a Cancel whose request has not arrived (yet): on Kafka a Cancel can overtake
        its request (another topic), which is then dropped on arrival. Bounded in time and
        size, as an adapter's (``bus.base``): most ids are other runners' requests."""
        now = time.monotonic()
        early = self._early_cancels
        early[request_id] = now + CANCEL_MEMORY
        while early and (len(early) > CANCEL_MEMORY_SIZE or next(iter(early.values())) < now):
            early.popitem(last=False)

    async def _on_credit(self, body: bytes) -> None:
        msg = _decoded(body)
        if isinstance(msg, Credit) and (call := self._calls.get(msg.id)) is not None:
            call.credits.grant(msg.limit)

    async def _on_request(self, body: bytes) -> None:
        """Takes the request and returns at once: the saga runs in its own task, so one slow
        saga does not hold the subscription."""
        req = _decoded(body)
        if not isinstance(req, Request):
            return
        if req.deadline and time.time() >= req.deadline:
            return  # nobody waits for it any more
        if self._early_cancels and self._early_cancels.pop(req.id, None) is not None:
            return  # its client went away before it arrived
        span = self._span(req) if self.tracing is not None else None
        meta = Meta(
            request_id=req.shown_id,
            system=req.system,
            path=req.path,
            channel=req.channel,
            method=req.method,
            query=req.query,
            headers=req.headers,
            identity=req.identity,
            traceparent=span.traceparent if span is not None else req.traceparent,
            deadline=req.deadline,
        )
        call = self._calls[req.id] = _Call(req, meta, span)
        self._idle.clear()
        work = self._stream(req, call) if req.kind == "stream" else self._request(req, call)
        task = asyncio.ensure_future(_logged(work, req.id))
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._done(t, req.id))

    def _span(self, req: Request) -> tr.Span | None:
        """The call's CONSUMER span, when the edge traces it; its spans are held for the
        Reply when the edge asks for them (``Request.spans_in_reply``)."""
        tracing = self.tracing
        if tracing is None or not tr.is_sampled(req.traceparent):
            return None
        span = self.consumer.start(tracing, req, {SAGA: req.path})
        if req.spans_in_reply and not req.detach and tracing.bus is not None:
            tracing.bus.hold(req.id)
        return span

    def _spans_for(self, req: Request, span: tr.Span) -> bytes:
        """End the call's span as its reply goes, and the spans for that reply: none when
        not asked, or when the edge may have given up (the deadline is at hand): they are
        published from here then (``_done``)."""
        bus = self.tracing.bus if self.tracing is not None else None
        if bus is None or not req.spans_in_reply or req.detach:
            return b""
        return bus.for_reply(span, req.id, req.deadline)

    def _done(self, task: asyncio.Task[None], request_id: str) -> None:
        self._tasks.discard(task)
        call = self._calls.pop(request_id, None)
        span = call.span if call is not None else None
        if span is not None and not span.end_time:
            if self.tracing is not None and self.tracing.bus is not None:
                self.tracing.bus.release(request_id)
            if call is not None and call.meta.cancelled.is_set():
                span.add_event("cancelled")
            span.end()
        if not self._calls:
            self._idle.set()

    # -- calls -------------------------------------------------------------------------

    async def _request(self, req: Request, call: _Call) -> None:
        if req.detach:
            await self._detached(req, call)
        elif req.reply_to:
            reply = await self._reply_of(req, call)
            if (span := call.span) is not None:
                if reply.error is not None:
                    tr.fail(span, reply.error.code, reply.error.message)
                if spans := self._spans_for(req, span):
                    reply = msgspec.structs.replace(reply, spans=spans)
            await self._answer(req, encode(reply), spans=reply.spans)

    async def _reply_of(self, req: Request, call: _Call) -> Reply:
        """The saga's answer as a Reply: its JSON, or the error it raised."""
        try:
            saga = self.sagas.get(req.path.strip("/"))
            if saga is None:
                raise NotFound(f"no saga {req.path!r} in system {self.system!r}")
            parameters = _parameters(req.body)
            deadline = _loop_deadline(req.deadline)
            try:
                async with asyncio.timeout_at(deadline):
                    result = await saga(parameters, call.meta)
            except TimeoutError:
                raise DeadlineExceeded(f"saga {req.path!r} ran past its deadline") from None
            return Reply(id=req.id, headers=JSON_HEADERS, body=json_encode(result))
        except BusgateError as exc:
            return Reply(id=req.id, status=exc.status, error=exc.to_wire())
        except Exception:
            log.exception("saga %s failed for %s", req.path, req.id)
            error = BusgateError(f"saga {req.path!r} failed")
            return Reply(id=req.id, status=error.status, error=error.to_wire())

    async def _detached(self, req: Request, call: _Call) -> None:
        """``X-Async`` (as an adapter does it): ``backend`` = 202 as soon as the runner has
        the request, then the saga runs; ``gateway`` = the edge answered 202 already. The
        saga's answer is logged and dropped."""
        if req.detach == "backend" and req.reply_to:
            accepted = json_encode({"requestId": req.id})
            await self._answer(
                req, encode(Reply(id=req.id, status=202, body=accepted, headers=JSON_HEADERS))
            )
        reply = await self._reply_of(req, call)
        log.info("async request %s answered %d (dropped)", req.id, reply.status)

    async def _answer(self, req: Request, data: bytes, *, seq: int = 0, spans: bytes = b"") -> None:
        """Send a reply (or, with ``seq``, a step); one larger than the bus carries is
        replaced by a small ``reply_too_large`` error, so the caller is not left waiting.
        ``spans``: those the reply carries (``Reply.spans``), kept in the error."""
        try:
            await self._publish(req.reply_to, data)
        except (MaxPayloadError, MessageSizeTooLargeError):
            log.warning("answer to %s: %d bytes, more than the bus carries", req.id, len(data))
            error = ReplyTooLarge(f"the answer of system {self.system!r} is too large").to_wire()
            if seq:
                small = encode(StreamStep(id=req.id, seq=seq, last=True, error=error))
            else:  # the spans it carried, if any, go with the error
                small = encode(Reply(id=req.id, status=error.status, error=error, spans=spans))
            await self._publish(req.reply_to, small)
            raise _Ended from None

    async def _stream(self, req: Request, call: _Call) -> None:
        """The saga loop, like an adapter's: a step only when the edge has credit for it, an
        error ends the stream, a Cancel stops it before the next call and ends a pause."""
        seq = 0
        credit_to = self._credit_address(req.id) if req.credits > 0 else ""
        cancelled = call.meta.cancelled

        async def send(step: StreamStep) -> None:
            await self._answer(req, encode(step), seq=step.seq)

        try:
            saga = self.streams.get(req.path.strip("/"))
            if saga is None:
                raise NotFound(f"no stream {req.path!r} in system {self.system!r}")
            parameters = _parameters(req.body)
            budget = (req.deadline - time.time()) if req.deadline else 0.0
            previous = req.resume
            while not cancelled.is_set():
                try:
                    async with asyncio.timeout(self.credit_timeout):
                        if not await call.credits.wait(seq + 1, cancelled):
                            return
                except TimeoutError:
                    log.warning("stream %s stopped: no credit from the edge", req.id)
                    return
                try:
                    async with asyncio.timeout(budget if budget > 0 else None):
                        step = await saga(parameters, call.meta, previous)
                except TimeoutError:
                    raise DeadlineExceeded(f"stream step {req.path!r} ran past its time") from None
                if cancelled.is_set():
                    return
                seq += 1
                last = step.next is None
                items = [json_encode(item) for item in step.items]
                await send(
                    StreamStep(
                        id=req.id,
                        seq=seq,
                        items=items,
                        next=step.next,
                        last=last,
                        credit_to=credit_to,
                    )
                )
                if last:
                    return
                previous = step.next
                if step.wait > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(step.wait):
                            await cancelled.wait()
        except _Ended:
            return
        except BusgateError as exc:
            if call.span is not None:
                tr.fail(call.span, exc.code, exc.message)
            await send(StreamStep(id=req.id, seq=seq + 1, last=True, error=exc.to_wire()))
        except Exception:
            log.exception("stream %s failed for %s", req.path, req.id)
            error = BusgateError(f"stream {req.path!r} failed").to_wire()
            if call.span is not None:
                tr.fail(call.span, error.code, error.message)
            await send(StreamStep(id=req.id, seq=seq + 1, last=True, error=error))

    def _credit_address(self, request_id: str) -> str:
        """Where the edge sends this stream's Credits: like an adapter's reply address."""
        if self.scheme == "nats":
            return f"{self.reply_topic}.{request_id}"
        return self.reply_topic

    # -- lifecycle ---------------------------------------------------------------------

    async def announce(self, ttl: float | None = None) -> None:
        """Broadcast Presence (ttl=0 says goodbye), so edges know a runner serves this
        system: on Kafka they send nothing without it."""
        beat = Presence(
            node=self.node,
            systems=(self.system,),
            capacity=self.capacity,
            ttl=self.presence_ttl if ttl is None else ttl,
            partitions={self.system: self._held} if self._held is not None and ttl != 0 else {},
        )
        await self._publish(self.names.control, encode(beat))

    async def _announce_forever(self) -> None:
        while True:
            await asyncio.sleep(self.presence_interval)
            try:
                await self.announce()
            except Exception as exc:
                log.warning("presence heartbeat not sent: %r", exc)

    async def start(self, *, join_timeout: float = 30.0) -> None:
        """Connect, subscribe, then announce: on Kafka once the group gave this runner its
        partitions, so no request is sent before someone reads it."""
        if isinstance(self.broker, KafkaBroker):
            await self._ensure_topics()
        self._serving = True
        await self.broker.start()
        if isinstance(self.broker, NatsBroker) and isinstance(self.broker.connection, NatsClient):
            self._nc = self.broker.connection
        if self.tracing is not None and self.telemetry is not None and self.telemetry.bus_export:
            await self.tracing.export_to(self._trace_sink(self.telemetry))
        if isinstance(self.broker, KafkaBroker):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(join_timeout):
                    await self._assigned.wait()
        await self.announce()
        self._beat = asyncio.ensure_future(self._announce_forever())
        log.info("runner %s serving system %s on %s", self.node, self.system, self.url)

    def _trace_sink(self, telemetry: Telemetry) -> TraceSink:
        """Where this runner's spans go on the bus: its NATS connection, or a producer."""
        from busgate.bus.trace_export import KafkaTraceSink, NatsTraceSink

        max_age = telemetry.bus_max_age
        if self._nc is not None:
            return NatsTraceSink(
                self._nc, self.names, max_age=max_age, storage=telemetry.bus_storage
            )
        return KafkaTraceSink(
            kafka_client(",".join(self.servers), self.tls), self.names, max_age=max_age
        )

    async def _ensure_topics(self) -> None:
        from busgate.bus.kafka.admin import Topics

        topics = Topics(
            kafka_client(",".join(self.servers), self.tls),
            client_id=f"busgate-{self.node}-admin",
            replication=None,
        )
        _, _, options = parse_url(self.url)
        topics.wanted[self.names.request(self.system)] = options.get("request_partitions", 2)
        topics.wanted[self.reply_topic] = 1
        topics.wanted[self.names.control] = 1
        await topics.start()
        try:
            await topics.ensure(list(topics.wanted))
        finally:
            await topics.close()

    async def stop(self, grace: float = 10.0) -> None:
        """Drain: say goodbye, take no more requests, give those in hand ``grace`` seconds."""
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat
        if self._serving:
            self._serving = False
            with contextlib.suppress(Exception):
                await self.announce(ttl=0)
            # Leave the queue/consumer group: the other runners get what this one would.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(STOP_WAIT):
                    await self._requests.stop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._idle.wait()
        for task in list(self._tasks):
            task.cancel()
        if self.tracing is not None:  # its last spans, while the bus is still there
            with contextlib.suppress(Exception):
                async with asyncio.timeout(STOP_WAIT):
                    await self.tracing.close()
        try:
            async with asyncio.timeout(STOP_WAIT):
                await self.broker.stop()
        except Exception as exc:
            # The broker went first (a whole stack stopping): FastStream's NATS stop drains,
            # which waits up to 30 s for a server that is not coming back.
            log.warning("runner %s: the bus did not close cleanly (%r)", self.node, exc)
            if self._nc is not None:
                with contextlib.suppress(Exception):
                    await self._nc.close()

    async def run_forever(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    def run(self) -> None:
        asyncio.run(self.run_forever())


async def _logged(work: Awaitable[None], request_id: str) -> None:
    """A call's task: what it could not send (the bus went away) is logged, not lost."""
    try:
        await work
    except _Ended:
        pass
    except Exception:
        log.exception("call %s: the answer could not be sent", request_id)


def _decoded(body: bytes) -> Any:
    try:
        return decode(body)
    except (msgspec.DecodeError, TypeError):
        return None


def _loop_deadline(deadline: float) -> float | None:
    """An absolute wall-clock deadline on the event loop's clock (None = none)."""
    if not deadline:
        return None
    return asyncio.get_running_loop().time() + (deadline - time.time())


__all__ = ["Meta", "Runner", "Step"]
