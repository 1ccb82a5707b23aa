"""``/api/request/{channel}/{path}``: one call, one reply, through the bus."""

from __future__ import annotations

from aiohttp import web

from busgate.contracts.errors import Remote
from busgate.contracts.resilience import Policy
from busgate.edge import envelope, keys
from busgate.edge.async_calls import HEADER, handle_async
from busgate.edge.rate_limit import RateLimited
from busgate.edge.resilience import send, with_headers
from busgate.edge.responses import error_response, from_reply


async def handle_request(request: web.Request) -> web.StreamResponse:
    app = request.app
    if (detach := request.headers.get(HEADER)) is not None:
        return await handle_async(request, detach)
    guards = app[keys.GUARDS]
    policy = guards.policy(request)
    if policy.empty:
        envelope_ = await envelope.build(request, app[keys.CONFIG], "request")
        reply = await app[keys.BUS].request(envelope_)
        if reply.error is not None:
            raise Remote(reply.error)
        return from_reply(reply)
    return await _guarded(request, policy)


async def _guarded(request: web.Request, policy: Policy) -> web.StreamResponse:
    """Rate limits, breaker, bulkhead and the edge's retries (``edge.resilience``)."""
    app = request.app
    guards = app[keys.GUARDS]
    try:
        verdicts = await guards.limit(request, policy)
    except RateLimited as exc:
        refused = error_response(exc, request.get(keys.REQUEST_ID))
        return with_headers(refused, [exc.verdict])
    envelope_ = await envelope.build(request, app[keys.CONFIG], "request")
    async with guards.protect(policy) as outcome:
        reply = await send(app[keys.BUS], envelope_, policy)
        if reply.error is not None:
            raise Remote(reply.error)
        outcome.status = reply.status
    return with_headers(from_reply(reply), verdicts)
