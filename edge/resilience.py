"""What stands between a call and the bus: rate limits, bulkhead, circuit breaker and the
edge's own retries, per channel/path as ``contracts.resilience`` resolves them.

A channel without ``resilience`` (and no ``[gateway.rate_limit]``) costs one cached lookup
per call. The order: rate limits (429, nothing else spent), then the breaker (503
``circuit_open`` without publishing), then the bulkhead (503 ``bulkhead_full``), then the
call. The edge retries only what no adapter answered (``no_adapter``, ``bus_unavailable``
in ``retry.on_codes``): an adapter that answered has already retried its runner.
"""

from __future__ import annotations

import asyncio
import hashlib
import time

import msgspec
from aiohttp import web

from busgate.bus.base import Bus
from busgate.contracts import errors
from busgate.contracts.codec import json_decode
from busgate.contracts.config import Config
from busgate.contracts.resilience import NONE, Policy, Resolver, pause
from busgate.contracts.wire import Reply, Request
from busgate.edge.breaker import CircuitBreaker
from busgate.edge.bulkhead import Bulkhead
from busgate.edge.client_ip import client_ip, networks
from busgate.edge.keys import IDENTITY
from busgate.edge.rate_limit import Verdict, Windows
from busgate.edge.rate_limit import headers as limit_headers

EDGE_CODES = frozenset({"no_adapter", "bus_unavailable"})
"""The failures where no adapter answered: the only ones the edge itself retries."""


class Guards:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.resolve = Resolver(config)
        self.windows = Windows(config.gateway.rate_limit.sync_interval)
        self.trusted = networks(config.gateway.trusted_proxies)
        self.breakers: dict[str, CircuitBreaker] = {}
        self.bulkheads: dict[str, Bulkhead] = {}

    @property
    def sharing(self) -> bool:
        """Whether any limit is configured, so counts are worth exchanging."""
        gateway = self.config.gateway
        if gateway.rate_limit.user or gateway.rate_limit.ip or gateway.login_limit.enabled:
            return True
        for ch in self.config.channels.values():
            rules = [ch.resilience, *(r.resilience for r in ch.paths.values())]
            if any(r is not None and (r.rate or r.user or r.ip) for r in rules):
                return True
        return False

    def policy(self, request: web.Request) -> Policy:
        info = request.match_info
        channel = info.get("channel")
        if channel is None or channel not in self.config.channels:
            return NONE
        return self.resolve(channel, info.get("path", ""))

    def ip(self, request: web.Request) -> str:
        return client_ip(request, self.trusted)

    async def limit(self, request: web.Request, policy: Policy) -> list[Verdict]:
        """Admit the call under every limit that applies; raises RateLimited."""
        verdicts = []
        if policy.rate is not None:
            verdicts.append(
                await self.windows.admit(f"rate:{policy.rate.scope}", policy.rate.value)
            )
        identity = request.get(IDENTITY)
        if identity is not None and policy.user is not None:
            key = f"user:{policy.user.scope}|{identity.subject}"
            verdicts.append(await self.windows.admit(key, policy.user.value))
        elif identity is None and policy.ip is not None:
            key = f"ip:{policy.ip.scope}|{self.ip(request)}"
            verdicts.append(await self.windows.admit(key, policy.ip.value))
        return verdicts

    async def login(self, request: web.Request, credentials: bytes) -> None:
        """Login protection (``gateway.login_limit``): attempts per client IP, then per
        username (hashed: counts cross the bus), each refused with 429 past its limit."""
        login = self.config.gateway.login_limit
        if not login.enabled:
            return
        channel = request.match_info.get("channel", "")
        await self.windows.admit(f"login-ip:{channel}|{self.ip(request)}", login.ip)
        try:
            username = json_decode(credentials).get("username")
        except (msgspec.DecodeError, AttributeError):
            return
        if isinstance(username, str):
            digest = hashlib.sha256(username.encode()).hexdigest()[:32]
            await self.windows.admit(f"login-user:{channel}|{digest}", login.username)

    def breaker(self, policy: Policy) -> CircuitBreaker | None:
        if policy.breaker is None:
            return None
        scope = policy.breaker.scope
        found = self.breakers.get(scope)
        if found is None:
            found = self.breakers[scope] = CircuitBreaker(scope, policy.breaker.value)
        return found

    def bulkhead(self, policy: Policy) -> Bulkhead | None:
        if policy.bulkhead is None:
            return None
        scope = policy.bulkhead.scope
        found = self.bulkheads.get(scope)
        if found is None:
            found = self.bulkheads[scope] = Bulkhead(scope, policy.bulkhead.value)
        return found

    def protect(self, policy: Policy) -> Protected:
        """Breaker, then bulkhead, around one call; the caller fills in the outcome."""
        return Protected(self.breaker(policy), self.bulkhead(policy))

    def status(self) -> dict[str, object]:
        """For ``/readyz``: breakers, bulkheads, and the edges sharing the limits."""
        return {
            "breakers": {name: b.status() for name, b in sorted(self.breakers.items())},
            "bulkheads": {name: b.in_flight for name, b in sorted(self.bulkheads.items())},
            "limit_peers": len(self.windows.live_peers()),
        }


class Protected:
    """``async with``: the breaker's check and the bulkhead's slot on entry; on exit the
    slot back and the call's ``status`` to the breaker (none: it gave no verdict). A class,
    not a generator: it runs on every call of a protected channel."""

    __slots__ = ("_started", "breaker", "bulkhead", "status")

    def __init__(self, breaker: CircuitBreaker | None, bulkhead: Bulkhead | None) -> None:
        self.breaker = breaker
        self.bulkhead = bulkhead
        self.status: int | None = None
        self._started = 0.0

    async def __aenter__(self) -> Protected:
        if self.breaker is not None:
            self.breaker.check()
            self._started = time.monotonic()
        if self.bulkhead is not None:
            try:
                await self.bulkhead.acquire()
            except BaseException:
                if self.breaker is not None:
                    self.breaker.release()
                raise
        return self

    async def __aexit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if self.bulkhead is not None:
            self.bulkhead.release()
        if isinstance(exc, errors.BusgateError):
            self.status = exc.status
        breaker = self.breaker
        if breaker is not None:
            if self.status is None:
                breaker.release()
            else:
                breaker.record(self.status >= 500, time.monotonic() - self._started)


async def send(bus: Bus, req: Request, policy: Policy) -> Reply:
    """``bus.request``, retried when no adapter answered and the policy allows it."""
    retry = policy.retry.value if policy.retry is not None else None
    if retry is None or req.method not in retry.methods or retry.attempts <= 1:
        return await bus.request(req)
    codes = EDGE_CODES.intersection(retry.on_codes)
    attempt = 1
    while True:
        try:
            return await bus.request(req)
        except errors.BusgateError as exc:
            if exc.code not in codes or attempt >= retry.attempts:
                raise
            delay = pause(retry, attempt)
            if req.deadline and time.time() + delay >= req.deadline:
                raise
        await asyncio.sleep(delay)
        attempt += 1


def with_headers(response: web.StreamResponse, verdicts: list[Verdict]) -> web.StreamResponse:
    if verdicts:
        response.headers.update(limit_headers(verdicts))
    return response
