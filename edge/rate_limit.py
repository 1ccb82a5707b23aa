"""Rate limits per channel, path, user and IP, shared by every edge through the bus.

Each limit counts calls in fixed windows aligned on the wall clock (``floor(now / period)``),
so all edges agree on which window a call falls in. An edge admits a call while its own count
plus the counts its peers last reported (``edge.limits_sync``) stay under the limit.

Alone, an edge is exact. With N edges, the counts of the others are up to one exchange old,
so an edge may admit, per exchange round, only its share of what is left:
``ceil((limit - seen) / N)``. A round ends when every live peer has reported after this
edge's last report; then its admissions are known to all. A caller over its share waits for
the next round (about one ``sync_interval``), then is admitted or refused. Each round thus
admits at most what was left, plus rounding: measured with three edges, a limit of 50 and
300 calls as fast as they go, 50-52 admitted (the bound the README states).

``max_wait`` > 0 queues a caller for a permit instead of refusing it at once: the local
bucket is an ``aiolimiter.AsyncLimiter`` (leaky bucket, FIFO), bounded by ``max_wait``, and
the shared window still has the last word.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiolimiter import AsyncLimiter

from busgate.contracts import errors
from busgate.contracts.config import Limit

ROUND_WAIT = 3.0
"""Sync intervals a caller over its share waits for the next round."""


@dataclass(slots=True)
class Peer:
    heard: float = 0.0
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)
    """key -> (window, count), as last reported."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """The state of one limit after a call was admitted: for the ``RateLimit`` headers."""

    name: str
    limit: Limit
    remaining: int
    reset: float


class RateLimited(errors.RateLimited):
    """429 with the limit that refused, for the ``RateLimit`` headers."""

    def __init__(self, message: str, verdict: Verdict) -> None:
        super().__init__(message, retry_after=max(1.0, math.ceil(verdict.reset)))
        self.verdict = verdict


class Windows:
    """This edge's counts, its peers' reported counts and the admission rule."""

    def __init__(self, sync_interval: float = 0.05, clock: Callable[[], float] = time.time) -> None:
        self.interval = sync_interval
        self.ttl = max(1.0, 20 * sync_interval)
        self._clock = clock
        self.local: dict[str, tuple[int, int]] = {}
        self.confirmed: dict[str, tuple[int, int]] = {}
        """Counts every live peer has heard about (reported before their last report)."""
        self.peers: dict[str, Peer] = {}
        self._pending: tuple[float, dict[str, tuple[int, int]]] | None = None
        self._round = asyncio.Event()
        self._buckets: dict[str, AsyncLimiter] = {}
        self.periods: dict[str, float] = {}

    # -- the exchange's side ----------------------------------------------------------

    def live_peers(self) -> list[Peer]:
        now = time.monotonic()
        return [p for p in self.peers.values() if now - p.heard < self.ttl]

    def report(self) -> dict[str, tuple[int, int]]:
        """The counts to publish now (current windows only); starts a round."""
        now = self._clock()
        current = {
            key: (w, c)
            for key, (w, c) in self.local.items()
            if w == int(now // self.periods.get(key, 1.0))
        }
        self.local = current
        if self._pending is None and current != self.confirmed:
            self._pending = (time.monotonic(), dict(current))
        if not self.live_peers():
            self._confirm()
        return current

    def heard(self, node: str, counts: dict[str, tuple[int, int]]) -> None:
        peer = self.peers.get(node)
        if peer is None:
            peer = self.peers[node] = Peer()
        peer.heard = time.monotonic()
        peer.counts = counts
        if self._pending is not None:
            sent = self._pending[0]
            if all(p.heard > sent for p in self.live_peers()):
                self._confirm()

    def forget(self, node: str) -> None:
        self.peers.pop(node, None)

    def _confirm(self) -> None:
        if self._pending is not None:
            self.confirmed = self._pending[1]
            self._pending = None
        self._round.set()
        self._round = asyncio.Event()

    # -- the admission rule -----------------------------------------------------------

    def _seen(self, key: str, window: int, peers: list[Peer]) -> int:
        return sum(wc[1] for p in peers if (wc := p.counts.get(key)) and wc[0] == window)

    def _mine(self, table: dict[str, tuple[int, int]], key: str, window: int) -> int:
        wc = table.get(key)
        return wc[1] if wc is not None and wc[0] == window else 0

    def try_admit(self, key: str, limit: Limit) -> tuple[bool, bool, Verdict]:
        """(admitted, worth waiting for the next round, verdict)."""
        now = self._clock()
        self.periods[key] = limit.period
        window = int(now // limit.period)
        reset = (window + 1) * limit.period - now
        peers = self.live_peers()
        mine = self._mine(self.local, key, window)
        seen = mine + self._seen(key, window, peers)
        left = limit.limit - seen
        if left <= 0:
            return False, False, Verdict(key, limit, 0, reset)
        if peers:
            share = math.ceil(left / (len(peers) + 1))
            unconfirmed = mine - self._mine(self.confirmed, key, window)
            if unconfirmed >= share:
                return False, True, Verdict(key, limit, left, reset)
        self.local[key] = (window, mine + 1)
        return True, False, Verdict(key, limit, left - 1, reset)

    async def admit(self, key: str, limit: Limit) -> Verdict:
        """Admit one call under ``limit`` for ``key``, or raise RateLimited."""
        if limit.unlimited:
            return Verdict(key, limit, -1, 0.0)
        if limit.max_wait > 0:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = AsyncLimiter(max(limit.limit, 1), limit.period)
            try:
                async with asyncio.timeout(limit.max_wait):
                    await bucket.acquire()
            except TimeoutError:
                _, _, verdict = self.try_admit_dry(key, limit)
                raise RateLimited(f"rate limit {limit.limit}/{limit.period:g}s", verdict) from None
        end = time.monotonic() + max(limit.max_wait, ROUND_WAIT * self.interval)
        while True:
            admitted, wait, verdict = self.try_admit(key, limit)
            if admitted:
                return verdict
            remaining = end - time.monotonic()
            if wait and remaining > 0:
                round_ = self._round
                try:
                    async with asyncio.timeout(remaining):
                        await round_.wait()
                except TimeoutError:
                    pass
                continue
            if limit.max_wait > 0 and 0 < verdict.reset <= remaining:
                await asyncio.sleep(verdict.reset)
                continue
            raise RateLimited(
                f"rate limit of {limit.limit} calls per {limit.period:g} s reached", verdict
            )

    def try_admit_dry(self, key: str, limit: Limit) -> tuple[bool, bool, Verdict]:
        now = self._clock()
        window = int(now // limit.period)
        reset = (window + 1) * limit.period - now
        seen = self._mine(self.local, key, window) + self._seen(key, window, self.live_peers())
        return False, False, Verdict(key, limit, max(limit.limit - seen, 0), reset)


def headers(verdicts: list[Verdict]) -> dict[str, str]:
    """IETF ``RateLimit-Policy`` / ``RateLimit`` (draft-ietf-httpapi-ratelimit-headers):
    every limit that applied, and the remaining quota of each."""
    shown = [v for v in verdicts if not v.limit.unlimited]
    if not shown:
        return {}
    policy = ", ".join(
        f'"{_name(v.name)}";q={v.limit.limit};w={math.ceil(v.limit.period)}' for v in shown
    )
    state = ", ".join(
        f'"{_name(v.name)}";r={max(v.remaining, 0)};t={math.ceil(v.reset)}' for v in shown
    )
    return {"RateLimit-Policy": policy, "RateLimit": state}


def _name(key: str) -> str:
    """The policy's name: its kind and scope, never the user or IP it counted."""
    kind, _, rest = key.partition(":")
    scope = rest.split("|", 1)[0]
    return "".join(ch for ch in f"{kind}-{scope}" if ch.isalnum() or ch in "-_/*.")
