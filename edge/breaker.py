"""A circuit breaker per channel/path on each edge.

Counts the runner's failures (5xx answers, timeouts, no adapter: status >= 500), never the
caller's 4xx, and calls slower than ``slow_call``, over a window of the last ``size`` calls
or seconds. Past ``failure_rate`` (or ``slow_rate``) with at least ``min_calls`` seen, it
opens: calls are refused at once with 503 ``circuit_open`` and never reach the bus, so a dead
runner is not called again on every request until each times out. After ``open_wait`` it is
half-open: ``half_open_calls`` calls go through; all succeed -> closed, one fails -> open.
State changes are logged and shown on ``/readyz``.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import Callable
from typing import Literal

from busgate.contracts.config import Breaker as BreakerConfig
from busgate.contracts.errors import CircuitOpen

log = logging.getLogger("busgate.edge.breaker")

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(
        self, name: str, config: BreakerConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self.config = config
        self._clock = clock
        self.state: State = "closed"
        self._calls: collections.deque[tuple[float, bool, bool]] = collections.deque()
        self._failures = 0
        self._slows = 0
        self._opened = 0.0
        self._trial_permits = 0
        self._trial_ok = 0

    def _set(self, state: State) -> None:
        if state != self.state:
            log.warning("circuit %s: %s -> %s", self.name, self.state, state)
            self.state = state

    def check(self) -> None:
        """Let a call through, or raise CircuitOpen."""
        if self.state == "closed":
            return
        now = self._clock()
        if self.state == "open":
            left = self._opened + self.config.open_wait - now
            if left > 0:
                raise CircuitOpen(
                    f"the circuit of {self.name} is open: its runner has been failing",
                    retry_after=max(1, math.ceil(left)),
                )
            self._set("half_open")
            self._trial_permits, self._trial_ok = self.config.half_open_calls, 0
        if self._trial_permits <= 0:
            raise CircuitOpen(f"the circuit of {self.name} is half-open and busy", retry_after=1)
        self._trial_permits -= 1

    def record(self, failed: bool, duration: float) -> None:
        cfg = self.config
        slow = cfg.slow_call > 0 and duration > cfg.slow_call
        now = self._clock()
        if self.state == "half_open":
            if failed or slow:
                self._open(now)
            else:
                self._trial_ok += 1
                if self._trial_ok >= cfg.half_open_calls:
                    self._reset()
                    self._set("closed")
            return
        if self.state == "open":
            return  # a call let through before it opened
        calls = self._calls
        calls.append((now, failed, slow))
        self._failures += failed
        self._slows += slow
        if cfg.window == "count":
            if len(calls) > cfg.size:
                self._forget_oldest()
        else:
            while calls and calls[0][0] < now - cfg.size:
                self._forget_oldest()
        n = len(calls)
        if n < cfg.min_calls:
            return
        if self._failures * 100 >= cfg.failure_rate * n or (
            cfg.slow_call > 0 and self._slows * 100 >= cfg.slow_rate * n
        ):
            self._open(now)

    def _forget_oldest(self) -> None:
        _, failed, slow = self._calls.popleft()
        self._failures -= failed
        self._slows -= slow

    def _reset(self) -> None:
        self._calls.clear()
        self._failures = self._slows = 0

    def release(self) -> None:
        """A call let through ended with no verdict (its client went away)."""
        if self.state == "half_open":
            self._trial_permits += 1

    def _open(self, now: float) -> None:
        self._opened = now
        self._reset()
        self._set("open")

    def status(self) -> dict[str, object]:
        return {"state": self.state, "calls": len(self._calls)}
