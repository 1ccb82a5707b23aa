"""The edge's HTTP server: aiohttp's, plus what a public port needs and aiohttp lacks.

- **Read timeouts.** aiohttp has none for a request that arrives slowly: a client trickling
  its headers, or stalling a (chunked) body, held its connection for as long as it liked.
  Here a request head must be complete within ``gateway.header_timeout`` of its first byte
  (of the connection's start, for the first request), and a body may not pause for longer
  than ``gateway.body_timeout``; otherwise the connection is closed. Idle keep-alive
  connections close after ``gateway.keepalive_timeout`` (aiohttp's own timer).
- **Parser errors as JSON.** A request aiohttp cannot parse (a 64 KB URL, a bare LF, a bad
  method) was answered in plain text that echoed the client's bytes, and logged with a
  traceback at ERROR each time. Here it is the JSON error shape with a code, and one line
  at WARNING.

The timers cost nothing for a request that arrives in one read (the usual case): a head
timer is armed only while a head is incomplete, a body timer only while a body is.

aiohttp offers no public hook for either, so this module is the one place that subclasses
its ``Server`` and ``RequestHandler`` and reads a few of their private attributes
(``_messages``, ``_request_count``, ``_force_close``, ``_reading_paused``, ``_loop``,
``_kwargs``). ``tests/edge/test_http_server.py`` fails loudly when they change.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from busgate.contracts.config import Gateway
from busgate.edge.responses import JSON, SERVER, error_body

log = logging.getLogger("busgate.edge.http")


@dataclass(frozen=True, slots=True)
class ReadTimeouts:
    header: float = 10.0
    body: float = 30.0

    @classmethod
    def of(cls, gateway: Gateway) -> ReadTimeouts:
        return cls(header=gateway.header_timeout, body=gateway.body_timeout)


def _parse_error(exc: HttpProcessingError) -> tuple[str, str]:
    """(code, message) for what aiohttp's parser refused; never the client's bytes."""
    if isinstance(exc, LineTooLong):
        return "line_too_long", "the request line or a header line is too long"
    name = type(exc).__name__
    return "bad_http_message", f"the request is not valid HTTP/1.1 ({name})"


class EdgeRequestHandler(RequestHandler):
    """One connection: aiohttp's handler with read timeouts and JSON parser errors."""

    __slots__ = ("_body", "_body_read", "_body_timer", "_head_timer", "timeouts")

    timeouts: ReadTimeouts

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeouts = ReadTimeouts()
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body: Any = None  # the payload being received, while it is incomplete
        self._body_read = 0.0

    # -- read timeouts -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_head()  # a new connection must send its first head in time

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_head()
        self._stop_body()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._body is not None:
            self._body_read = self._loop.time()
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:  # one head (or more) complete
            self._stop_head()
            self._stop_body()
            payload = self._messages[-1][1] if self._messages else None
            if payload is not None and not payload.is_eof() and self.timeouts.body > 0:
                self._body = payload
                self._body_read = self._loop.time()
                self._body_timer = self._loop.call_at(
                    self._body_read + self.timeouts.body, self._body_idle
                )
        elif self._body is not None:
            if self._body.is_eof():
                self._stop_body()
        elif self._head_timer is None and data and self.transport is not None:
            # A head begun in this read and not complete: timed from now, its first byte.
            # Armed only now, so a head that arrives in one read (the usual keep-alive call)
            # costs no timer (call_later + cancel, ~3 µs a call).
            self._arm_head()

    def resume_reading(self, resume_parser: bool = True) -> None:
        """Only what was paused is resumed. aiohttp's payload reader calls this after every
        chunk it hands out, paused or not, and the base class then feeds the parser an empty
        read through ``data_received``: for a body read in one go (the usual call) that is
        work for nothing, 1-2 µs per request of a 2-core box's edge. While reading is not
        paused, the parser holds nothing back that an empty read would release."""
        if self._reading_paused:
            super().resume_reading(resume_parser)

    def _arm_head(self) -> None:
        if self.timeouts.header > 0:
            self._head_timer = self._loop.call_later(self.timeouts.header, self._head_late)

    def _stop_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _stop_body(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._body = None

    def _head_late(self) -> None:
        self._head_timer = None
        if not self._force_close:
            log.debug("closed a connection whose request head took over %gs", self.timeouts.header)
            self.force_close()

    def _body_idle(self) -> None:
        self._body_timer = None
        body = self._body
        if body is None or body.is_eof() or self._force_close:
            self._body = None
            return
        now = self._loop.time()
        due = self._body_read + self.timeouts.body
        if self._reading_paused:  # we stopped reading (the handler is behind), not the client
            self._body_read, due = now, now + self.timeouts.body
        if now < due:
            self._body_timer = self._loop.call_at(due, self._body_idle)
            return
        log.debug("closed a connection whose body paused for over %gs", self.timeouts.body)
        self._body = None
        self.force_close()

    # -- parser errors -------------------------------------------------------------------

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError):  # a defect: aiohttp logs its stack
            return super().handle_error(request, status, exc, message)
        code, text = _parse_error(exc)
        # Not HTTP at all (TLS on this port, scanners): routine on a public port, so INFO.
        level = logging.INFO if isinstance(exc, BadHttpMethod) else logging.WARNING
        log.log(level, "refused a malformed request from %s: %s", request.remote, text)
        if request.writer.output_size > 0:
            raise ConnectionError("the answer had begun; the connection is closed instead")
        response = web.Response(
            status=exc.code if 400 <= exc.code < 500 else 400,
            body=error_body(code, text, None),
            content_type=JSON,
        )
        response.headers["Server"] = SERVER
        response.force_close()
        return response


class EdgeServer(web.Server):
    """Makes :class:`EdgeRequestHandler` s for the connections."""

    def __init__(self, *args: Any, timeouts: ReadTimeouts, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeouts = timeouts

    def __call__(self) -> RequestHandler:
        handler = EdgeRequestHandler(self, loop=self._loop, **self._kwargs)
        handler.timeouts = self.timeouts
        return handler


class EdgeRunner(web.AppRunner):
    """``web.AppRunner`` whose server is an :class:`EdgeServer`."""

    __slots__ = ("timeouts",)

    def __init__(self, app: web.Application, *, timeouts: ReadTimeouts, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.timeouts = timeouts

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # starts and freezes the app
        return EdgeServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=asyncio.get_running_loop(),
            timeouts=self.timeouts,
            **plain._kwargs,
        )


def runner_for(app: web.Application, gateway: Gateway, **kwargs: Any) -> EdgeRunner:
    """The runner for an edge app, with the gateway's read and keep-alive timeouts."""
    return EdgeRunner(
        app,
        timeouts=ReadTimeouts.of(gateway),
        keepalive_timeout=gateway.keepalive_timeout,
        **kwargs,
    )
