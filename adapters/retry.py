"""Retries of a runner call, where the failure is: in the adapter, with no extra bus round
trip (the edge retries only calls no adapter answered, see ``edge.resilience``).

Only the path's ``retry.methods`` (GET, PUT, DELETE by default) are retried, on the
runner's ``on_status`` or an error whose code is in ``on_codes`` (``upstream_unreachable``:
the runner could not be reached). The pause is ``wait * backoff ** (n - 1)`` with jitter,
and a retry that could not start before the call's deadline is not made: the caller gets
the last failure, not a late answer. The runner sees ``meta.attempt``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import msgspec

from busgate.contracts import errors
from busgate.contracts.config import Config, Retry
from busgate.contracts.resilience import Resolver, pause
from busgate.contracts.wire import Reply, Request

log = logging.getLogger("busgate.adapter.retry")

RetryFor = Callable[[Request], Retry | None]


class RunnerFailed(errors.UpstreamError):
    """The runner answered a server error; keeps its status for ``on_status``."""

    def __init__(self, message: str, runner_status: int) -> None:
        super().__init__(message)
        self.runner_status = runner_status


def _sets_retry(config: Config) -> bool:
    """Whether any channel or path of ``config`` sets a ``retry``."""
    for channel in config.channels.values():
        if channel.resilience is not None and channel.resilience.retry is not None:
            return True
        for rule in channel.paths.values():
            if rule.resilience is not None and rule.resilience.retry is not None:
                return True
    return False


def retry_for(config: Config) -> RetryFor | None:
    """The retry policy of a call (None: not retried), from the config the edge has too.

    None when nothing in ``config`` sets a retry: the client then skips the lookup (two per
    call) instead of resolving an empty policy every time.
    """
    if not _sets_retry(config):
        return None
    resolve = Resolver(config)

    def lookup(req: Request) -> Retry | None:
        if req.kind != "request" or not req.channel:
            return None
        scoped = resolve(req.channel, req.path).retry
        if scoped is None or req.method not in scoped.value.methods:
            return None
        return scoped.value if scoped.value.attempts > 1 else None

    return lookup


def retryable(exc: errors.BusgateError, retry: Retry) -> bool:
    if isinstance(exc, RunnerFailed) and exc.runner_status in retry.on_status:
        return True
    return exc.code in retry.on_codes


async def run(call: Callable[[Request], Awaitable[Reply]], req: Request, retry: Retry) -> Reply:
    """``call(req)``, again with ``attempt`` + 1 while the policy and the deadline allow."""
    attempt = 1
    while True:
        try:
            return await call(req)
        except errors.BusgateError as exc:
            if attempt >= retry.attempts or not retryable(exc, retry):
                raise
            delay = pause(retry, attempt)
            if req.deadline and time.time() + delay >= req.deadline:
                log.info("request %s: no retry, the deadline is too near", req.id)
                raise
            log.info("request %s: attempt %d failed (%s); retrying", req.id, attempt, exc.code)
        await asyncio.sleep(delay)
        attempt += 1
        req = msgspec.structs.replace(req, attempt=attempt)
