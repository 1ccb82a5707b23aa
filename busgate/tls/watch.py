"""Rotation: a certificate source re-read every ``poll`` seconds; a changed certificate
becomes current ``grace`` seconds after it was first seen, so that clients that pin or
pre-fetch it can trust it first.

A source that fails (a file that does not parse, a key written before its certificate)
keeps the current certificate in service and says so in the log; the next poll tries again.
At start there is nothing to keep, so the first read's error is raised.

The trusted-CA file (``ca``: client CAs of a server, the server's CA for a client) is
watched too: a change of it alone rebuilds the context at the next poll, without grace --
the CAs are what lets the other side's *new* certificate in, so they must come first.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from busgate.tls import self_signed
from busgate.tls.pem import KeyPair, PemError, read

log = logging.getLogger("busgate.tls")

Source = Callable[[], KeyPair]
Pair = TypeVar("Pair", KeyPair, KeyPair | None)
"""A watch's certificate: a client without one of its own (no mTLS) watches its CA only."""


def no_cert() -> None:
    """The source of a client that presents no certificate (its CA file is still watched)."""
    return None


def _fingerprint(pair: KeyPair | None) -> str:
    return pair.fingerprint if pair is not None else ""


def _digest(path: str) -> str:
    """SHA-256 of a CA file; raises OSError."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else ""


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


class CertWatch(Generic[Pair]):
    """The current certificate of a source and the trusted-CA file ``ca`` (read by
    ``apply``), and the poll that replaces them."""

    def __init__(
        self,
        name: str,
        source: Callable[[], Pair],
        *,
        poll: float,
        grace: float,
        apply: Callable[[Pair], None],
        ca: str = "",
    ) -> None:
        self.name = name
        self.source: Callable[[], Pair] = source
        self.poll = poll
        self.grace = grace
        self.apply: Callable[[Pair], None] = apply
        self.ca = ca
        # At start: an error is the caller's (a config error).
        try:
            self.ca_digest = _digest(ca)
        except OSError as exc:
            raise PemError(f"cannot read {exc.filename}: {exc.strerror}") from None
        self.current: Pair = source()
        apply(self.current)
        self._pending: tuple[Pair, float] | None = None
        self._changed = asyncio.Event()

    def check(self) -> None:
        """One poll: take a changed CA file at once; note a new certificate, or make a noted
        one current once due."""
        self._check_ca()
        try:
            pair = self.source()
        except PemError as exc:
            log.warning("%s: %s; the current certificate stays in service", self.name, exc)
            return
        if _fingerprint(pair) == _fingerprint(self.current):
            self._pending = None
            return
        now = time.monotonic()
        if self._pending is None or _fingerprint(self._pending[0]) != _fingerprint(pair):
            self._pending = (pair, now + self.grace)
            if pair is not None:
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

    def _check_ca(self) -> None:
        try:
            digest = _digest(self.ca)
        except OSError as exc:
            log.warning("%s: cannot read %s: %s; the current CAs stay", self.name, self.ca, exc)
            return
        if digest == self.ca_digest:
            return
        try:
            self.apply(self.current)  # the same certificate, the CA file read anew
        except (OSError, ValueError) as exc:
            log.warning("%s: cannot use the CAs in %s: %s", self.name, self.ca, exc)
            return
        self.ca_digest = digest
        log.info("%s: now trusting the CAs in %s (%s)", self.name, self.ca, digest[:16])
        self._changed.set()
        self._changed = asyncio.Event()

    def _swap(self, pair: Pair) -> None:
        try:
            self.apply(pair)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            log.warning("%s: cannot use the new certificate: %s", self.name, exc)
            return
        self.current = pair
        self._pending = None
        log.info("%s: now serving certificate %s", self.name, _fingerprint(pair)[:16] or "none")
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self) -> Pair:
        """The certificate current after the next change (of it, or of the CA file)."""
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
