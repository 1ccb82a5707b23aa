"""``/api/request/{channel}/{path}``: one call, one reply, through the bus."""

from __future__ import annotations

from aiohttp import web

from busgate.contracts.errors import Remote
from busgate.contracts.resilience import Policy
from busgate.contracts.wire import Reply
from busgate.edge import envelope, formats, keys
from busgate.edge.async_calls import HEADER, handle_async
from busgate.edge.middleware.errors import shaped_error
from busgate.edge.rate_limit import RateLimited
from busgate.edge.resilience import send, with_headers
from busgate.edge.responses import from_reply


async def handle_request(request: web.Request) -> web.StreamResponse:
    app = request.app
    if (detach := request.headers.get(HEADER)) is not None:
        return await handle_async(request, detach)
    fmt = formats.wanted(request)  # 406 before any runner call
    guards = app[keys.GUARDS]
    policy = guards.policy(request)
    if policy.empty:
        envelope_ = await envelope.build(request, app[keys.LIVE].config, "request")
        reply = await app[keys.BUS].request(envelope_)
        if reply.error is not None:
            raise Remote(reply.error)
        return _shaped(request, envelope_.channel, _answer(reply, fmt))
    return await _guarded(request, policy, fmt)


def _shaped(request: web.Request, channel: str, response: web.StreamResponse) -> web.StreamResponse:
    """The channel's response headers for the public path (an alias's, not its target's)."""
    rules = request.app[keys.RESPONSE_HEADERS].get(channel)
    if rules is not None:
        for name, value in rules.for_call(request.match_info["path"], request.method):
            response.headers[name] = value
    return response


def _answer(reply: Reply, fmt: str | None) -> web.StreamResponse:
    return from_reply(reply) if fmt is None else formats.render(reply, fmt)


async def _guarded(request: web.Request, policy: Policy, fmt: str | None) -> web.StreamResponse:
    """Rate limits, breaker, bulkhead and the edge's retries (``edge.resilience``)."""
    app = request.app
    guards = app[keys.GUARDS]
    try:
        verdicts = await guards.limit(request, policy)
    except RateLimited as exc:
        refused = shaped_error(request, exc)
        return with_headers(refused, [exc.verdict])
    envelope_ = await envelope.build(request, app[keys.LIVE].config, "request")
    async with guards.protect(policy) as outcome:
        reply = await send(app[keys.BUS], envelope_, policy)
        if reply.error is not None:
            raise Remote(reply.error)
        outcome.status = reply.status
    return with_headers(_shaped(request, envelope_.channel, _answer(reply, fmt)), verdicts)
