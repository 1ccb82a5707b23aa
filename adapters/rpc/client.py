"""Calls RPC runners over HTTP with a pooled keep-alive client, and runs saga loops.

The runner receives ``{"parameters": <payload>, "meta": {...}}``. The payload bytes are
spliced in as they came from the edge (already checked to be JSON), never re-encoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aiohttp
import msgspec

from bus.base import Responder
from contracts import errors
from contracts.codec import json_decode, json_encode
from contracts.config import Gateway, RpcSystem
from contracts.wire import Reply, Request

_PASS_HEADERS = ("content-type", "cache-control", "etag", "last-modified", "location")


class SagaStep(msgspec.Struct):
    """The part of a runner's answer the saga loop reads; other keys are ignored."""

    items: list[msgspec.Raw] = msgspec.field(default_factory=list, name="list")
    next: Any = None
    wait: float | None = None
    continue_: bool = msgspec.field(default=False, name="continue")


_saga_decoder = msgspec.json.Decoder(SagaStep)


def _meta(req: Request, trace_id: str) -> bytes:
    identity = msgspec.to_builtins(req.identity) if req.identity else None
    return json_encode(
        {
            "requestId": req.id,
            "traceId": trace_id,
            "channel": req.channel,
            "path": req.path,
            "method": req.method,
            "identity": identity,
        }
    )


def trace_id_of(traceparent: str) -> str:
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 else ""


class RpcClient:
    def __init__(self, name: str, system: RpcSystem, gateway: Gateway) -> None:
        self.name = name
        self.system = system
        self.gateway = gateway
        self.base_url = system.base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.system.max_connections, keepalive_timeout=30, ttl_dns_cache=300
            )
            self._session = aiohttp.ClientSession(
                connector=connector, headers=self.system.headers, skip_auto_headers=("User-Agent",)
            )
        return self._session

    def _remaining(self, req: Request) -> float:
        remaining = self.system.timeout
        if req.deadline:
            remaining = min(remaining, req.deadline - time.time())
        if remaining <= 0:
            raise errors.DeadlineExceeded("the deadline passed before the runner was called")
        return remaining

    async def _post(self, req: Request, parameters: bytes) -> tuple[int, dict[str, str], bytes]:
        timeout = self._remaining(req)
        body = b'{"parameters":%b,"meta":%b}' % (
            parameters or b"null",
            _meta(req, trace_id_of(req.traceparent)),
        )
        headers = {
            "Content-Type": "application/json",
            "X-Request-Id": req.id,
            "traceparent": req.traceparent,
        }
        if req.tracestate:
            headers["tracestate"] = req.tracestate
        url = f"{self.base_url}/{req.path}"
        try:
            async with self.session.post(
                url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                payload = await resp.read()
                passed = {k: v for k in _PASS_HEADERS if (v := resp.headers.get(k)) is not None}
                return resp.status, passed, payload
        except TimeoutError:
            raise errors.DeadlineExceeded(
                f"runner of system {self.name!r} did not answer within {timeout:.3g} s"
            ) from None
        except aiohttp.ClientError as exc:
            raise errors.UpstreamUnreachable(
                f"runner of system {self.name!r} is unreachable: {type(exc).__name__}"
            ) from None

    async def call(self, req: Request) -> Reply:
        status, headers, payload = await self._post(req, req.body)
        if status >= 500:
            raise errors.UpstreamError(f"runner of system {self.name!r} answered {status}")
        return Reply(id=req.id, status=status, headers=headers, body=payload)

    async def stream(self, req: Request, responder: Responder) -> None:
        """The saga loop: call, send the step, wait, call again with ``previous``."""
        try:
            parameters = json_decode(req.body) if req.body else {}
        except msgspec.DecodeError:
            parameters = {}
        if not isinstance(parameters, dict):
            parameters = {"value": parameters}
        previous: Any = req.resume
        default_wait = self.gateway.stream_wait
        while not responder.cancelled.is_set():
            if previous is not None:
                parameters["previous"] = previous
            deadline = time.time() + self.system.timeout
            step_req = msgspec.structs.replace(req, deadline=deadline)
            try:
                status, _, payload = await self._post(step_req, json_encode(parameters))
                if status >= 400:
                    raise errors.UpstreamError(
                        f"runner of system {self.name!r} answered {status}: "
                        f"{payload[:200].decode(errors='replace')}"
                    )
                try:
                    step = _saga_decoder.decode(payload)
                except msgspec.DecodeError:
                    raise errors.UpstreamError(
                        f"runner of system {self.name!r} answered a non-saga body"
                    ) from None
            except errors.BusgateError as exc:
                await responder.step([], last=True, error=exc)
                return
            last = not step.continue_
            cursor = None if step.next is None else str(step.next)
            await responder.step([bytes(item) for item in step.items], next=cursor, last=last)
            if last:
                return
            previous = step.next
            wait = default_wait if step.wait is None else step.wait / 1000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(responder.cancelled.wait(), wait)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
