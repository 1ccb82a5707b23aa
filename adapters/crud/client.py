"""Calls CRUD runners over HTTP: the client's method, query and body go through as they are.

Unlike an RPC call the body is not wrapped in ``parameters``: the runner stores what the
client sent. ``If-Match`` / ``If-None-Match`` (forwarded by the edge, see
``gateway.forward_headers``) go to the runner and its ``ETag`` comes back, so optimistic
concurrency works end to end; the runner's status passes through (404, 409, 412, …), a 5xx
becomes a 502 as for RPC. Pooling, deadlines, the path check and tracing are the RPC
client's, which this one extends.

``/api/stream`` on a CRUD channel pages through a list: each step is one page (``limit``
from the query, the runner's default otherwise), its cursor the next ``offset``, so a client
that reconnects with ``Last-Event-ID`` resumes after the last page it got.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import msgspec

from busgate.adapters.rpc.client import RpcClient, SagaStep
from busgate.contracts import errors
from busgate.contracts.config import CrudSystem, Gateway
from busgate.contracts.wire import Request

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_CONDITIONS = ("if-match", "if-none-match", "accept")


class Page(msgspec.Struct):
    """What a CRUD runner's list answers."""

    items: list[msgspec.Raw]
    total: int
    offset: int = 0


_page_decoder = msgspec.json.Decoder(Page)


class CrudClient(RpcClient):
    def __init__(self, name: str, system: CrudSystem, gateway: Gateway) -> None:
        super().__init__(name, system.as_rpc(), gateway)

    async def _post(self, req: Request, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """One runner call with the client's method (named ``_post`` as the RPC client's,
        which the observer wraps)."""
        timeout = self._remaining(req)
        headers = {
            "X-Request-Id": req.shown_id,
            "traceparent": req.traceparent,
        }
        if req.tracestate:
            headers["tracestate"] = req.tracestate
        for name in _CONDITIONS:
            if (value := req.headers.get(name)) is not None:
                headers[name] = value
        data: bytes | None = None
        if req.method in _BODY_METHODS:
            data = body or b"{}"
            headers["Content-Type"] = "application/json"
        url = self.runner_url(req.path)
        if req.query and req.method in ("GET", "DELETE"):
            url = url.with_query(req.query)
        try:
            async with self.session.request(
                req.method,
                url,
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                payload = await resp.read()
                passed = {
                    k: v
                    for k in ("content-type", "etag", "last-modified", "location")
                    if (v := resp.headers.get(k)) is not None
                }
                return resp.status, passed, payload
        except TimeoutError:
            raise self._too_slow(timeout) from None
        except aiohttp.ClientError as exc:
            raise self._unreachable(exc) from None

    async def _saga_step(self, req: Request, parameters: dict[str, Any], budget: float) -> SagaStep:
        """One page of a list, as a saga step whose cursor is the next offset."""
        if req.method != "GET":
            raise errors.MethodNotAllowed("a CRUD stream lists: use GET")
        query = dict(req.query)
        previous = parameters.get("previous")
        if previous not in (None, ""):
            query["offset"] = str(previous)
        page_req = msgspec.structs.replace(req, query=query, deadline=time.time() + budget)
        status, _, payload = await self._post(page_req, b"")
        if status >= 500:
            raise errors.UpstreamError(f"runner of system {self.name!r} answered {status}")
        if status >= 400:
            said = payload[:200].decode(errors="replace")
            raise errors.RunnerRefused(status, f"runner of system {self.name!r}: {said}")
        try:
            page = _page_decoder.decode(payload)
        except msgspec.DecodeError as exc:
            raise errors.UpstreamError(
                f"runner of system {self.name!r} answered a non-list body: {exc}"
            ) from None
        end = page.offset + len(page.items)
        more = len(page.items) > 0 and end < page.total
        return SagaStep(items=page.items, next=end, wait=0.0, continue_=more)
