"""Rotation: a certificate source re-read every ``poll`` seconds; a changed certificate
becomes current ``grace`` seconds after it was first seen, so that clients that pin or
pre-fetch it can trust it first.

A source that fails (a file that does not parse, a key written before its certificate)
keeps the current certificate in service and says so in the log; the next poll tries again.
At start there is nothing to keep, so the first read's error is raised.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from busgate.tls import self_signed
from busgate.tls.pem import KeyPair, PemError, read

log = logging.getLogger("busgate.tls")

Source = Callable[[], KeyPair]


def files(cert: str, key: str, *, key_name: str = "") -> Source:
    return lambda: read(cert, key, key_name=key_name)


def folder(path: str) -> Source:
    """``cert.pem`` + ``key.pem``, or ``tls.crt`` + ``tls.key`` (a Kubernetes TLS secret)."""

    def source() -> KeyPair:
        for cert, key in (("cert.pem", "key.pem"), ("tls.crt", "tls.key")):
            if Path(path, cert).exists():
                return read(Path(path, cert), Path(path, key))
        raise PemError(f"{path}: holds neither cert.pem/key.pem nor tls.crt/tls.key")

    return source


def self_signed_source(hosts: tuple[str, ...], lifetime: float, renew_before: float) -> Source:
    """A self-signed certificate, made anew once it is within ``renew_before`` of expiry."""
    made: list[KeyPair] = []

    def source() -> KeyPair:
        if not made or made[-1].not_after.timestamp() - time.time() <= renew_before:
            made[:] = [self_signed.generate(hosts, lifetime)]
        return made[-1]

    return source


class CertWatch:
    """The current certificate of a source, and the poll that replaces it."""

    def __init__(
        self,
        name: str,
        source: Source,
        *,
        poll: float,
        grace: float,
        apply: Callable[[KeyPair], None],
    ) -> None:
        self.name = name
        self.source = source
        self.poll = poll
        self.grace = grace
        self.apply = apply
        self.current = source()  # at start: an error is the caller's (a config error)
        apply(self.current)
        self._pending: tuple[KeyPair, float] | None = None
        self._changed = asyncio.Event()

    def check(self) -> None:
        """One poll: note a new certificate, or make a noted one current once due."""
        try:
            pair = self.source()
        except PemError as exc:
            log.warning("%s: %s; the current certificate stays in service", self.name, exc)
            return
        if pair.fingerprint == self.current.fingerprint:
            self._pending = None
            return
        now = time.monotonic()
        if self._pending is None or self._pending[0].fingerprint != pair.fingerprint:
            self._pending = (pair, now + self.grace)
            log.info(
                "%s: new certificate %s (%s, until %s), served in %gs",
                self.name,
                pair.fingerprint[:16],
                pair.subject,
                pair.not_after.isoformat(),
                self.grace,
            )
        if now >= self._pending[1]:
            self._swap(pair)

    def _swap(self, pair: KeyPair) -> None:
        try:
            self.apply(pair)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            log.warning("%s: cannot use the new certificate: %s", self.name, exc)
            return
        self.current = pair
        self._pending = None
        log.info("%s: now serving certificate %s", self.name, pair.fingerprint[:16])
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self) -> KeyPair:
        """The next certificate made current."""
        await self._changed.wait()
        return self.current

    def _delay(self) -> float:
        if self._pending is None:
            return self.poll
        return max(0.0, min(self.poll, self._pending[1] - time.monotonic()))

    async def run(self) -> None:
        """Poll until cancelled."""
        while True:
            await asyncio.sleep(self._delay())
            self.check()
