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
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiolimiter import AsyncLimiter

from busgate.contracts import errors
from busgate.contracts.config import Limit

ROUND_WAIT = 1.0
"""Seconds a caller over this edge's share of a round waits for the next rounds (a round
takes an interval plus two bus hops: about 60 ms on NATS, 150 ms on Kafka here), while the
limit has room left; a limit without room refuses at once."""


@dataclass(slots=True)
class Peer:
    name: str
    heard: float = 0.0
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)
    """key -> (window, count), as last reported."""
    seq: int = 0
    """The number of its last report."""
    echo: int | None = None
    """The number of this edge's last report it had heard when it reported (None: it does
    not say; then hearing from it at all is taken as its having heard)."""


FULL_EVERY = 20
"""Every this many reports carries all counts, not only the changed ones (about once a
second at the default interval): a lost report is healed by then, and peers forget the
windows that ended."""


@dataclass(frozen=True, slots=True)
class Report:
    counts: dict[str, tuple[int, int]]
    full: bool
    seq: int
    seen: dict[str, int]


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

    def __init__(
        self, sync_interval: float = 0.05, clock: Callable[[], float] = time.time, node: str = ""
    ) -> None:
        self.interval = sync_interval
        self.ttl = max(1.0, 20 * sync_interval)
        self.node = node
        self._clock = clock
        self.local: dict[str, tuple[int, int]] = {}
        self.confirmed: dict[str, tuple[int, int]] = {}
        """Counts every live peer has heard about (before it last reported)."""
        self.peers: dict[str, Peer] = {}
        self.seq = 0
        self._sent: dict[str, tuple[int, int]] = {}
        self._pending: tuple[int, float, dict[str, tuple[int, int]]] | None = None
        self._round = asyncio.Event()
        self._buckets: dict[str, AsyncLimiter] = {}
        self.periods: dict[str, float] = {}

    # -- the exchange's side ----------------------------------------------------------

    def live_peers(self) -> list[Peer]:
        if not self.peers:
            return []
        now = time.monotonic()
        return [p for p in self.peers.values() if now - p.heard < self.ttl]

    def report(self) -> Report:
        """What to publish now: the counts of the current windows that changed since the last
        report (all of them every ``FULL_EVERY`` reports, healing lost ones), this report's
        number, and the numbers of the peers' reports heard (so each peer knows what this
        edge knew). Also forgets the windows that ended: call it every interval."""
        now = self._clock()
        current = {
            key: (w, c)
            for key, (w, c) in self.local.items()
            if w == int(now // self.periods.get(key, 1.0))
        }
        if len(current) < len(self.local):
            self.periods = {k: p for k, p in self.periods.items() if k in current}
            self._buckets = {k: b for k, b in self._buckets.items() if k in current}
        self.local = current
        self.seq += 1
        full = self.seq % FULL_EVERY == 1
        sent = self._sent
        changed = dict(current) if full else {k: v for k, v in current.items() if sent.get(k) != v}
        self._sent = dict(current)
        if self._pending is None and current != self.confirmed:
            self._pending = (self.seq, time.monotonic(), dict(current))
        peers = self.live_peers()
        if not peers:
            self._confirm()
        return Report(changed, full, self.seq, {p.name: p.seq for p in peers})

    def heard(
        self,
        node: str,
        counts: dict[str, tuple[int, int]],
        seq: int = 0,
        echo: dict[str, int] | None = None,
        full: bool = True,
    ) -> None:
        """A peer's report: all its counts (``full``) or those that changed."""
        peer = self.peers.get(node)
        if peer is None:
            peer = self.peers[node] = Peer(node)
        peer.heard = time.monotonic()
        if full:
            peer.counts = counts
        else:
            peer.counts.update(counts)
        peer.seq = seq
        peer.echo = None if echo is None else echo.get(self.node, 0)
        if self._pending is not None:
            number, sent, _ = self._pending
            if all(
                (p.echo >= number) if p.echo is not None else (p.heard > sent)
                for p in self.live_peers()
            ):
                self._confirm()

    def forget(self, node: str) -> None:
        self.peers.pop(node, None)

    def _confirm(self) -> None:
        if self._pending is not None:
            self.confirmed = self._pending[2]
            self._pending = None
        self._round.set()
        self._round = asyncio.Event()

    # -- the admission rule -----------------------------------------------------------

    def _seen(self, key: str, window: int, peers: list[Peer]) -> int:
        return sum(wc[1] for p in peers if (wc := p.counts.get(key)) and wc[0] == window)

    def _mine(self, table: dict[str, tuple[int, int]], key: str, window: int) -> int:
        wc = table.get(key)
        return wc[1] if wc is not None and wc[0] == window else 0

    def try_admit(self, key: str, limit: Limit, waited: bool = False) -> tuple[bool, bool, Verdict]:
        """(admitted, worth waiting for the next round, verdict). A caller that ``waited``
        a whole round gets at least one permit of what is left, so a remainder smaller than
        the number of edges is not kept from the edge whose callers want it (at the cost of
        at most one call per edge over the limit)."""
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
            share = self._share(left, peers)
            if waited:
                share = max(share, 1)
            unconfirmed = mine - self._mine(self.confirmed, key, window)
            if unconfirmed >= share:
                return False, True, Verdict(key, limit, left, reset)
        self.local[key] = (window, mine + 1)
        return True, False, Verdict(key, limit, left - 1, reset)

    def _share(self, left: int, peers: list[Peer]) -> int:
        """This edge's part of ``left`` for one round: the parts of all edges add up to
        ``left`` exactly (the remainder goes to the first edges by name), so a round in
        which all edges see the same counts admits no more than is left."""
        names = sorted([self.node, *(p.name for p in peers)])
        whole, rest = divmod(left, len(names))
        return whole + (1 if names.index(self.node) < rest else 0)

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
                _, _, verdict = self._refusal(key, limit)
                raise RateLimited(f"rate limit {limit.limit}/{limit.period:g}s", verdict) from None
        admitted, wait, verdict = self.try_admit(key, limit)
        if admitted:  # the usual case
            return verdict
        end = time.monotonic() + max(limit.max_wait, ROUND_WAIT)
        waited = False
        while True:
            remaining = end - time.monotonic()
            if wait and remaining > 0:  # over this edge's share: the next round may admit
                round_ = self._round
                try:
                    async with asyncio.timeout(remaining):
                        await round_.wait()
                    waited = True
                except TimeoutError:
                    pass
            elif limit.max_wait > 0 and 0 < verdict.reset <= remaining:
                await asyncio.sleep(verdict.reset)  # queued for the next window
            else:
                raise RateLimited(
                    f"rate limit of {limit.limit} calls per {limit.period:g} s reached", verdict
                )
            admitted, wait, verdict = self.try_admit(key, limit, waited)
            if admitted:
                return verdict

    def _refusal(self, key: str, limit: Limit) -> tuple[bool, bool, Verdict]:
        now = self._clock()
        window = int(now // limit.period)
        reset = (window + 1) * limit.period - now
        seen = self._mine(self.local, key, window) + self._seen(key, window, self.live_peers())
        return False, False, Verdict(key, limit, max(limit.limit - seen, 0), reset)


def headers(verdicts: list[Verdict]) -> dict[str, str]:
    """IETF ``RateLimit-Policy`` / ``RateLimit`` (draft-ietf-httpapi-ratelimit-headers) of
    the limit closest to refusing, the one a client must heed."""
    tightest: Verdict | None = None
    for v in verdicts:
        if v.limit.limit >= 0 and (tightest is None or v.remaining < tightest.remaining):
            tightest = v
    if tightest is None:
        return {}
    name = _name(tightest.name.partition("|")[0])
    return {
        "RateLimit-Policy": _policy(name, tightest.limit),
        "RateLimit": f'"{name}";r={max(tightest.remaining, 0)};t={math.ceil(tightest.reset)}',
    }


@functools.lru_cache(maxsize=1024)
def _policy(name: str, limit: Limit) -> str:
    return f'"{name}";q={limit.limit};w={math.ceil(limit.period)}'


@functools.lru_cache(maxsize=1024)
def _name(kind_and_scope: str) -> str:
    """The policy's name: its kind and scope (the key up to ``|``), never the user or IP
    it counted."""
    kind, _, scope = kind_and_scope.partition(":")
    return "".join(ch for ch in f"{kind}-{scope}" if ch.isalnum() or ch in "-_/*.")
