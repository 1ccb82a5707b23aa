"""Calls RPC runners over HTTP with a pooled keep-alive client, and runs saga loops.

The runner receives ``{"parameters": <payload>, "meta": {...}}``. The payload bytes are
spliced in as they came from the edge (already checked to be JSON), never re-encoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
import msgspec
from yarl import URL

from busgate.adapters import retry
from busgate.adapters.retry import RetryFor
from busgate.adapters.rpc.balance import Balancer, Runner
from busgate.adapters.rpc.runner_auth import ClientCredentials
from busgate.bus.base import Responder
from busgate.contracts import errors
from busgate.contracts.codec import json_decode, json_encode
from busgate.contracts.config import Gateway, RpcSystem
from busgate.contracts.paths import refusal
from busgate.contracts.wire import Reply, Request
from busgate.tls.client import ClientCerts, ssl_for

if TYPE_CHECKING:
    from busgate.adapters.observe import AdapterObserver

_URL_CACHE = 1024
"""Runner URLs kept per client (building one costs ~2.5 µs, a hit ~0.1 µs)."""
_PASS_HEADERS = ("content-type", "cache-control", "etag", "last-modified", "location")


class SagaStep(msgspec.Struct):
    """The part of a runner's answer the saga loop reads; other keys are ignored."""

    items: list[msgspec.Raw] = msgspec.field(default_factory=list, name="list")
    next: Any = None
    wait: float | None = None
    continue_: bool = msgspec.field(default=False, name="continue")


_saga_decoder = msgspec.json.Decoder(SagaStep)
CREDIT_MARGIN = 5.0
"""Seconds added to the edge's stall timeout before a saga stops waiting for a credit."""
log = logging.getLogger("busgate.adapter.rpc")


def cursor_text(cursor: Any) -> str | None:
    """A runner's ``next`` as the text the edge sends as the SSE ``id``.

    Strings pass as they are; other JSON values (``4``, ``{"page": 2}``) as their JSON text.
    Within one loop the runner gets its cursor back as it sent it; after a reconnect it gets
    this text (``previous = "4"``), so runners should accept both.
    """
    if cursor is None or isinstance(cursor, str):
        return cursor
    return json_encode(cursor).decode()


def _meta(req: Request, trace_id: str, attempt: bool = False) -> bytes:
    identity = msgspec.to_builtins(req.identity) if req.identity else None
    meta = {
        "requestId": req.shown_id,
        "traceId": trace_id,
        "channel": req.channel,
        "path": req.path,
        "method": req.method,
        "identity": identity,
    }
    if req.query:  # a POST's query string (a GET's is its parameters already)
        meta["query"] = req.query
    if req.kind == "command":  # the runner may deduplicate on the id across attempts
        meta["commandId"] = req.id
        meta["attempt"] = req.attempt
    elif attempt:  # a call its path's retry policy may repeat (adapters.retry)
        meta["attempt"] = req.attempt
    if req.meta:  # an alias's mappings: never in place of what busgate itself says
        meta = {**req.meta, **meta}
    return json_encode(meta)


def trace_id_of(traceparent: str) -> str:
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 else ""


def unexpected_failure(req: Request, system: str) -> errors.BusgateError:
    """What any runner client makes of an exception it did not expect (a defect, or a
    misconfiguration such as a header aiohttp refuses): logged with its traceback here, and a
    500 for the caller now rather than a 504 at its deadline. Call it in an ``except``."""
    log.exception("request %s: calling the runner of system %r failed", req.id, system)
    return errors.BusgateError(f"internal error while calling the runner of system {system!r}")


class RpcClient:
    def __init__(
        self, name: str, system: RpcSystem, gateway: Gateway, retry_for: RetryFor | None = None
    ) -> None:
        self.name = name
        self.retry_for = retry_for
        self.system = system
        self.gateway = gateway
        self.base_url = system.base_url.rstrip("/")
        self._base = str(URL(self.base_url))  # encoded once, here
        self._urls: dict[str, URL] = {}  # path -> runner URL: most calls reuse a few paths
        runners = system.runners
        self.balancer = Balancer(runners, system.eject_time) if len(runners) > 1 else None
        self.tls = ClientCerts(f"systems.{name}", system.tls) if system.tls else None
        self.credentials = (
            ClientCredentials(name, system.auth, runners[0], self.tls)
            if system.auth is not None
            else None
        )
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.system.max_connections, keepalive_timeout=30, ttl_dns_cache=300
            )
            headers = dict(self.system.headers)
            if self.system.cookies:
                cookies = "; ".join(f"{k}={v}" for k, v in self.system.cookies.items())
                headers["Cookie"] = cookies
            self._session = aiohttp.ClientSession(
                connector=connector, headers=headers, skip_auto_headers=("User-Agent",)
            )
            if self.tls is not None:
                self.tls.start()
        return self._session

    def observe(self, observer: AdapterObserver) -> None:
        """Send every runner call through ``observer`` (a CLIENT span whose context the runner
        receives as ``traceparent``, latency). Installed on the instance: no cost without."""
        wrap = observer.runner(self.name, self.base_url)
        self._post = functools.partial(wrap, self._post)  # type: ignore[method-assign]

    def runner_url(self, path: str, runner: Runner | None = None) -> URL:
        """``BASE/PATH`` with the path the edge authorised, byte for byte.

        The path arrives decoded once (as the edge checked it). It is percent-encoded here
        and the URL marked as encoded, so that neither yarl nor aiohttp decodes it again or
        collapses dot segments: the runner decodes it once and sees what the edge saw. A path
        another producer put on the bus gets the edge's check too.
        """
        urls, base = (self._urls, self._base) if runner is None else (runner.urls, runner.base)
        url = urls.get(path)
        if url is None:
            if (why := refusal(path)) is not None:
                raise errors.BadRequest(why)
            if len(urls) >= _URL_CACHE:
                urls.clear()
            url = urls[path] = URL(f"{base}/{quote(path, safe='/')}", encoded=True)
        return url

    def _budget(self, req: Request) -> float:
        """Seconds a runner call may take: up to the envelope's deadline, which the edge set
        from the most specific timeout (path, channel, system, gateway) -- longer or shorter
        than this system's own. Only a request without a deadline gets the system's."""
        if req.deadline:
            return req.deadline - time.time()
        return self.system.timeout or self.gateway.timeout

    def _remaining(self, req: Request) -> float:
        remaining = self._budget(req)
        if remaining <= 0:
            raise errors.DeadlineExceeded("the deadline passed before the runner was called")
        return remaining

    async def _post(self, req: Request, parameters: bytes) -> tuple[int, dict[str, str], bytes]:
        timeout = self._remaining(req)
        retried = self.retry_for is not None and self.retry_for(req) is not None
        body = b'{"parameters":%b,"meta":%b}' % (
            parameters or b"null",
            _meta(req, trace_id_of(req.traceparent), retried),
        )
        headers = {
            "Content-Type": "application/json",
            "X-Request-Id": req.shown_id,
            "traceparent": req.traceparent,
        }
        if req.tracestate:
            headers["tracestate"] = req.tracestate
        balancer = self.balancer
        runner = balancer.pick() if balancer is not None else None
        refused = 0
        credentials, token, renewed = self.credentials, "", False
        if credentials is not None:
            token = await credentials.token(self.session)
            headers["Authorization"] = f"Bearer {token}"
        while True:
            url = self.runner_url(req.path, runner)
            try:
                async with self.session.post(
                    url,
                    data=body,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=timeout),
                    ssl=ssl_for(self.tls),
                ) as resp:
                    if resp.status == 401 and credentials is not None and not renewed:
                        # Refused before it acted: once more, with a fresh token.
                        renewed = True
                        token = await credentials.renew(self.session, token)
                        headers["Authorization"] = f"Bearer {token}"
                        timeout = self._remaining(req)
                        continue
                    payload = await self._read(resp)
                    if balancer is not None and runner is not None and resp.status >= 500:
                        balancer.failed(runner)
                    passed = {k: v for k in _PASS_HEADERS if (v := resp.headers.get(k)) is not None}
                    if self.system.pass_cookies and "set-cookie" in resp.headers:
                        # One Reply header: a line break never occurs inside a header value.
                        passed["set-cookie"] = "\n".join(resp.headers.getall("set-cookie"))
                    return resp.status, passed, payload
            except TimeoutError:
                raise self._too_slow(timeout) from None
            except aiohttp.ClientError as exc:
                if balancer is None or runner is None:
                    raise self._unreachable(exc) from None
                balancer.failed(runner)
                refused += 1
                # A refused connection sent nothing: the next runner may take the call.
                # Anything later (a connection dropped mid-call) may have been acted on.
                if not isinstance(exc, aiohttp.ClientConnectorError) or refused >= len(
                    balancer.runners
                ):
                    raise self._unreachable(exc) from None
                runner = balancer.pick(skip=runner)
                timeout = self._remaining(req)

    def _too_slow(self, timeout: float) -> errors.DeadlineExceeded:
        return errors.DeadlineExceeded(
            f"runner of system {self.name!r} did not answer within {timeout:.3g} s"
        )

    def _unreachable(self, exc: Exception) -> errors.UpstreamUnreachable:
        return errors.UpstreamUnreachable(
            f"runner of system {self.name!r} is unreachable: {type(exc).__name__}"
        )

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        """The answer's body, refused past ``max_answer`` bytes without reading the rest."""
        cap = self.system.max_answer
        if not cap:
            return await resp.read()
        if resp.content_length is not None and resp.content_length > cap:
            raise self._too_large(cap)
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > cap:
                raise self._too_large(cap)
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, cap: int) -> errors.ReplyTooLarge:
        return errors.ReplyTooLarge(
            f"runner of system {self.name!r} answered more than max_answer ({cap} bytes)"
        )

    async def call(self, req: Request) -> Reply:
        """One runner call, retried as the path's ``retry`` says (``adapters.retry``)."""
        policy = self.retry_for(req) if self.retry_for is not None else None
        if policy is None:
            return await self._call_once(req)
        return await retry.run(self._call_once, req, policy)

    async def _call_once(self, req: Request) -> Reply:
        try:
            status, headers, payload = await self._post(req, req.body)
        except errors.BusgateError:
            raise
        except Exception:
            raise unexpected_failure(req, self.name) from None
        if status >= 500:
            raise retry.RunnerFailed(f"runner of system {self.name!r} answered {status}", status)
        return Reply(id=req.id, status=status, headers=headers, body=payload)

    async def stream(self, req: Request, responder: Responder) -> None:
        """The saga loop: call the runner, send its ``list`` as one step, wait, call again.

        Each call gets the request's parameters plus ``previous`` = the last step's ``next``
        (at the start: the client's ``Last-Event-ID``, as text). The loop goes on while the
        runner answers ``"continue": true``, pausing ``wait`` ms between calls (default
        ``gateway.stream_wait``), and stops on the last step, on an error (sent as the final
        step) or on Cancel, which is checked before every call and ends a pause at once.

        Keepalives: during a pause longer than ``gateway.stream_heartbeat`` an empty step (no
        items, no cursor) goes out every heartbeat. The edge thus hears from a live saga at
        least every ``heartbeat + the call's timeout`` seconds whatever ``wait`` the runner
        chooses, and can give up on a dead adapter after that (see ``edge.stream``), instead
        of trusting a ``wait`` it never sees.

        Backpressure: each runner call waits for a credit from the edge (``bus.flow``), given
        as the edge's client takes the steps, so a client that stops reading stops the runner
        calls. A keepalive needs a credit too, and is skipped without one (the edge is then busy
        writing to its client, not waiting for steps). Without a credit for
        :meth:`credit_timeout` the edge is taken to be gone and the loop ends.
        """
        try:
            parameters = json_decode(req.body) if req.body else {}
        except (msgspec.DecodeError, RecursionError):  # the edge checks depth; others may not
            parameters = {}
        if not isinstance(parameters, dict):
            parameters = {"value": parameters}
        previous: Any = req.resume
        budget = self._budget(req)  # each step may take what the first may
        cancelled = responder.cancelled
        try:
            while not cancelled.is_set():
                try:
                    async with asyncio.timeout(self.credit_timeout()):
                        if not await responder.credit():
                            return  # cancelled
                except TimeoutError:
                    log.warning("stream %s stopped: no credit from the edge", req.id)
                    return
                if previous is not None:
                    parameters["previous"] = previous
                try:
                    step = await self._saga_step(req, parameters, budget)
                except errors.BusgateError as exc:
                    if not cancelled.is_set():
                        await responder.step([], last=True, error=exc)
                    return
                if cancelled.is_set():
                    return
                last = not step.continue_
                await responder.step(
                    [bytes(item) for item in step.items], next=cursor_text(step.next), last=last
                )
                if last:
                    return
                previous = step.next
                wait = self.gateway.stream_wait if step.wait is None else step.wait / 1000
                await self._pause(responder, max(wait, 0.0))
        except errors.BusUnavailable:
            log.warning("stream %s stopped: the bus is unavailable", req.id)

    async def _saga_step(self, req: Request, parameters: dict[str, Any], budget: float) -> SagaStep:
        """One runner call of a saga, taking at most ``budget`` seconds."""
        step_req = msgspec.structs.replace(req, deadline=time.time() + budget)
        status, _, payload = await self._post(step_req, json_encode(parameters))
        if status >= 500:
            # Like a call's: a 5xx body may hold internals (traces, names), so it is logged
            # here and the client gets the status only.
            log.warning(
                "stream %s: runner of system %r answered %d: %r",
                req.id,
                self.name,
                status,
                payload[:200],
            )
            raise errors.UpstreamError(f"runner of system {self.name!r} answered {status}")
        if status >= 400:
            said = payload[:200].decode(errors="replace")
            raise errors.RunnerRefused(status, f"runner of system {self.name!r}: {said}")
        try:
            return _saga_decoder.decode(payload)
        except msgspec.DecodeError as exc:
            raise errors.UpstreamError(
                f"runner of system {self.name!r} answered a non-saga body: {exc}"
            ) from None

    def credit_timeout(self) -> float | None:
        """How long the loop waits for a credit: past the edge's stall timeout (after which
        the edge drops its client and sends Cancel) plus a heartbeat and a margin, so only an
        edge that died, or a lost Cancel, leaves a saga to end this way."""
        stall = self.gateway.stream_stall_timeout
        if stall <= 0:
            return None
        return stall + self.gateway.stream_heartbeat + CREDIT_MARGIN

    async def _pause(self, responder: Responder, wait: float) -> None:
        """Wait between steps, ended early by Cancel; keepalive steps on long pauses."""
        heartbeat = self.gateway.stream_heartbeat
        end = time.monotonic() + wait
        while (remaining := end - time.monotonic()) > 0:
            chunk = min(remaining, heartbeat) if heartbeat > 0 else remaining
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(chunk):
                    await responder.cancelled.wait()
                return  # cancelled
            if end - time.monotonic() > 0 and responder.may_step():
                await responder.step([])

    def on_runner(self, url: str) -> bool:
        """Whether ``url`` is on one of this system's runners (scheme, host and port)."""
        origin = URL(url).origin()
        return any(URL(runner).origin() == origin for runner in self.system.runners)

    async def fetch(self, url: str, limit: int, seconds: float) -> tuple[int, bytes]:
        """GET ``url`` on a runner as its calls go: the system's headers and cookies, its
        TLS (CA, client certificate) and its runner credentials; at most ``limit`` bytes of
        the body, within ``seconds``. Raises what aiohttp raises (and TimeoutError)."""
        headers = {}
        if self.credentials is not None:
            headers["Authorization"] = f"Bearer {await self.credentials.token(self.session)}"
        async with self.session.get(
            url,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=seconds),
            ssl=ssl_for(self.tls),
        ) as resp:
            return resp.status, await resp.content.read(limit)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self.tls is not None:
            await self.tls.close()
