"""Calls RSocket runners: ``/api/request`` → request-response, ``/api/stream`` →
request-stream, with the saga path as the route and the ids in metadata (``metadata``).

Streams: each payload the runner emits is one step of one item. Flow control joins
RSocket's request-n to the edge's credits (``bus.flow``): the runner is asked for as many
payloads as the edge can take steps, and for more only when the edge grants more, so a
client that stops reading stops the runner. When the client goes away (the edge's Cancel)
the runner gets CANCEL.

A runner's failure is an APPLICATION_ERROR whose data is ``{"status", "error"}``: a 4xx
passes through (``RunnerRefused``), anything else is a 502. A lost connection is a 502, a
call past its deadline a 504 (and CANCEL to the runner).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from typing import TYPE_CHECKING, Any

import msgspec
from reactivestreams.subscriber import Subscriber
from reactivestreams.subscription import Subscription
from rsocket.exceptions import RSocketError
from rsocket.frame import MAX_REQUEST_N
from rsocket.payload import Payload

from busgate.adapters.rpc.client import unexpected_failure
from busgate.adapters.rsocket.metadata import request_metadata
from busgate.adapters.rsocket.pool import Pool, targets
from busgate.bus.base import Responder
from busgate.contracts import errors
from busgate.contracts.codec import json_decode, json_encode
from busgate.contracts.config import Gateway, RsocketSystem
from busgate.contracts.wire import Reply, Request

if TYPE_CHECKING:
    from busgate.adapters.observe import AdapterObserver

log = logging.getLogger("busgate.adapter.rsocket")
_JSON = {"content-type": "application/json"}


class RunnerFailure(msgspec.Struct):
    status: int = 500
    error: str = ""


_failure = msgspec.json.Decoder(RunnerFailure)


def failure_of(exc: BaseException, system: str) -> errors.BusgateError:
    """The BusgateError for what the library raised: rsocket-py turns an APPLICATION_ERROR
    into a plain ``RuntimeError`` of its data, other error frames into RSocket errors."""
    if type(exc) is RuntimeError:
        with contextlib.suppress(msgspec.DecodeError):
            said = _failure.decode(str(exc))
            if 400 <= said.status < 500:
                return errors.RunnerRefused(said.status, said.error or "refused")
        log.warning("runner of system %r failed: %.200s", system, exc)
        return errors.UpstreamError(f"runner of system {system!r} failed")
    if isinstance(exc, RSocketError):
        return errors.UpstreamUnreachable(f"runner of system {system!r}: connection lost")
    raise exc


class _Inbox(Subscriber):  # type: ignore[misc]
    """A request-stream's events as a queue the stream loop reads."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, Any, bool]] = asyncio.Queue()
        self.subscription: Subscription | None = None

    def on_subscribe(self, subscription: Subscription) -> None:
        self.subscription = subscription

    def on_next(self, value: Payload, is_complete: bool = False) -> None:
        self.queue.put_nowait(("next", value, is_complete))

    def on_error(self, exception: Exception) -> None:
        self.queue.put_nowait(("error", exception, True))

    def on_complete(self) -> None:
        self.queue.put_nowait(("complete", None, True))


class RsocketClient:
    def __init__(self, name: str, system: RsocketSystem, gateway: Gateway) -> None:
        self.name = name
        self.system = system
        self.gateway = gateway
        self.pool = Pool(name, system)
        self.url = f"{system.protocol}://{','.join(targets(system))}"

    def observe(self, observer: AdapterObserver) -> None:
        """Spans and latency per runner call, as for RPC (the observer's wrapper fits
        :meth:`_request`'s signature)."""
        wrap = observer.runner(self.name, self.url)
        self._request = functools.partial(wrap, self._request)  # type: ignore[method-assign]

    def _budget(self, req: Request) -> float:
        if req.deadline:
            return req.deadline - time.time()
        return self.system.timeout or self.gateway.timeout

    def _remaining(self, req: Request) -> float:
        remaining = self._budget(req)
        if remaining <= 0:
            raise errors.DeadlineExceeded("the deadline passed before the runner was called")
        return remaining

    async def _request(self, req: Request, data: bytes) -> tuple[int, dict[str, str], bytes]:
        timeout = self._remaining(req)
        metadata = request_metadata(req)
        started = time.monotonic()
        rsocket = await self.pool.pick(timeout)
        timeout -= time.monotonic() - started
        try:
            async with asyncio.timeout(timeout):
                # Cancelling this future (the deadline) sends CANCEL to the runner.
                answer = await rsocket.request_response(Payload(data or b"{}", metadata))
        except TimeoutError:
            raise errors.DeadlineExceeded(
                f"runner of system {self.name!r} did not answer in time"
            ) from None
        except (RuntimeError, RSocketError) as exc:
            raise failure_of(exc, self.name) from None
        return 200, _JSON, bytes(answer.data or b"null")

    async def call(self, req: Request) -> Reply:
        try:
            status, headers, body = await self._request(req, req.body)
        except errors.BusgateError:
            raise
        except Exception:
            raise unexpected_failure(req, self.name) from None
        return Reply(id=req.id, status=status, headers=headers, body=body)

    def _stream_data(self, req: Request) -> bytes:
        """The parameters, plus ``previous`` = the client's ``Last-Event-ID`` if any."""
        if req.resume is None:
            return req.body or b"{}"
        try:
            params = json_decode(req.body) if req.body else {}
        except (msgspec.DecodeError, RecursionError):
            params = {}
        if not isinstance(params, dict):
            params = {"value": params}
        params["previous"] = req.resume
        return json_encode(params)

    async def stream(self, req: Request, responder: Responder) -> None:
        """One request-stream; each payload one step, request-n following the edge's credits.

        Steps the loop sends (payloads and keepalives) are counted in ``sent``; the edge can
        take steps up to ``credits.limit``; ``requested - received`` payloads are on their
        way. A top-up task asks the runner for more (``request(n)``) whenever the edge's limit
        leaves room beyond what is already on its way. Without flow control on the edge the
        runner is asked for everything at once. While payloads are awaited the runner has
        the call's timeout for each; during long waits keepalive steps go out every
        ``gateway.stream_heartbeat`` as for RPC sagas.
        """
        budget = self._budget(req)
        try:
            if budget <= 0:
                raise errors.DeadlineExceeded("the deadline passed before the runner was called")
            metadata = request_metadata(req)
            rsocket = await self.pool.pick(budget)
        except errors.BusgateError as exc:
            await responder.step([], last=True, error=exc)
            return
        credits = responder.credits
        flow = credits.limit is not None
        state = {"sent": 0, "requested": credits.limit or MAX_REQUEST_N, "received": 0}
        inbox = _Inbox()
        requester = rsocket.request_stream(Payload(self._stream_data(req), metadata))
        requester.initial_request_n(state["requested"])
        requester.subscribe(inbox)
        cancelled = responder.cancelled
        topping = asyncio.create_task(self._top_up(responder, inbox, state)) if flow else None
        finished = False
        try:
            finished = await self._pump(req, responder, inbox, state, budget)
        except errors.BusUnavailable:
            log.warning("stream %s stopped: the bus is unavailable", req.id)
        finally:
            if topping is not None:
                topping.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await topping
            if not finished and inbox.subscription is not None:
                inbox.subscription.cancel()  # CANCEL to the runner
                log.info("stream %s: CANCEL sent (%s)", req.id, cancelled.is_set())

    async def _top_up(self, responder: Responder, inbox: _Inbox, state: dict[str, int]) -> None:
        credits = responder.credits
        while True:
            on_the_way = state["requested"] - state["received"]
            if not await credits.wait(state["sent"] + on_the_way + 1, responder.cancelled):
                return
            room = (credits.limit or 0) - state["sent"] - on_the_way
            if room > 0 and inbox.subscription is not None:
                inbox.subscription.request(room)
                state["requested"] += room

    async def _pump(
        self,
        req: Request,
        responder: Responder,
        inbox: _Inbox,
        state: dict[str, int],
        budget: float,
    ) -> bool:
        """Payloads to steps until the stream ends (True) or is cancelled (False)."""
        heartbeat = self.gateway.stream_heartbeat
        idle_since = time.monotonic()
        cancelled = asyncio.ensure_future(responder.cancelled.wait())
        try:
            while True:
                waiting = state["requested"] > state["received"]
                limit = budget - (time.monotonic() - idle_since) if waiting else None
                if limit is not None and limit <= 0:
                    error = errors.DeadlineExceeded(
                        f"runner of system {self.name!r} sent nothing for {budget:.3g} s"
                    )
                    await responder.step([], last=True, error=error)
                    state["sent"] += 1
                    return False
                bounds = [t for t in (limit, heartbeat if heartbeat > 0 else None) if t]
                got = asyncio.ensure_future(inbox.queue.get())
                done, _ = await asyncio.wait(
                    {got, cancelled},
                    timeout=min(bounds) if bounds else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if got not in done:
                    got.cancel()
                    if cancelled in done:
                        return False
                    if responder.may_step():  # keepalive
                        await responder.step([])
                        state["sent"] += 1
                    continue
                kind, value, last = got.result()
                idle_since = time.monotonic()
                if kind == "error":
                    await responder.step([], last=True, error=failure_of(value, self.name))
                    state["sent"] += 1
                    return True
                if kind == "complete":
                    await responder.step([], last=True)
                    state["sent"] += 1
                    return True
                state["received"] += 1
                data = bytes(value.data or b"")
                await responder.step([data] if data else [], last=last)
                state["sent"] += 1
                if last:
                    return True
        finally:
            cancelled.cancel()

    async def close(self) -> None:
        await self.pool.close()
