"""Round robin over a system's runners (``base_urls``) with passive health: a runner whose
connection is refused, or that answers 5xx, is left out for ``eject_time`` seconds, then
tried again by the next call that comes its way. No probes: calls are the health checks.
When every runner is out, the one due back first is tried (better than failing at once)."""

from __future__ import annotations

import time

from yarl import URL


class Runner:
    __slots__ = ("base", "down_until", "failures", "url", "urls")

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.base = str(URL(self.url))  # encoded once
        self.down_until = 0.0
        self.failures = 0
        self.urls: dict[str, URL] = {}  # path -> runner URL (see RpcClient.runner_url)


class Balancer:
    def __init__(self, urls: tuple[str, ...], eject_time: float) -> None:
        self.runners = [Runner(u) for u in urls]
        self.eject_time = eject_time
        self._next = 0

    def pick(self, skip: Runner | None = None) -> Runner:
        """The next runner in turn that is not left out (nor ``skip``)."""
        now = time.monotonic()
        count = len(self.runners)
        for _ in range(count):
            runner = self.runners[self._next]
            self._next = (self._next + 1) % count
            if runner is not skip and runner.down_until <= now:
                return runner
        others = [r for r in self.runners if r is not skip] or self.runners
        return min(others, key=lambda r: r.down_until)

    def failed(self, runner: Runner) -> None:
        runner.failures += 1
        runner.down_until = time.monotonic() + self.eject_time

    def healthy(self) -> int:
        now = time.monotonic()
        return sum(r.down_until <= now for r in self.runners)
