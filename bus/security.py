"""TLS to the bus, for every client of it: NATS connections (``tls://``) and Kafka clients
(``kafka+ssl://``), with the same URL options (``ca``, ``cert``, ``key``, ``poll``).

One :class:`RotatingContext` per set of files in a process, shared by all its connections.
It follows the rotation rules of ``busgate.tls.watch`` (a changed certificate or CA file is
used by new connections; one that does not parse leaves the current one in service), but
checks the files when a connection is made -- at most every ``poll`` seconds -- rather than
on a timer: nats-py and aiokafka take one ``SSLContext`` for their lifetime and connect (or
reconnect) through it, so that context must be the one that sees their new connections, and
it needs no task to start or stop in each of the dozen places that build a Kafka client. It
hands each handshake to a context built afresh from the files' last change rather than
reloading itself: an ``SSLContext``'s trust store only grows, so a CA removed from the file
would have stayed trusted until a restart. A CA added to the file is trusted, and one
removed refused, from the next connection on.
"""

from __future__ import annotations

import functools
import ssl
import time
from dataclasses import dataclass
from typing import Any

from busgate.tls import watch
from busgate.tls.contexts import client_context
from busgate.tls.pem import KeyPair


@dataclass(frozen=True, slots=True)
class BusTls:
    """PEM files for TLS to the bus: ``ca`` verifies the servers (empty = the system's trust
    store), ``cert`` and ``key`` are a client certificate; re-read every ``poll`` seconds."""

    ca: str = ""
    cert: str = ""
    key: str = ""
    poll: float = 10.0

    def __post_init__(self) -> None:
        if bool(self.cert) != bool(self.key):
            raise ValueError("bus URL: cert and key go together (a client certificate)")


class RotatingContext(ssl.SSLContext):
    """A client context that re-reads its files, through a
    :class:`~busgate.tls.watch.CertWatch`, when a handshake starts ``poll`` seconds or more
    after the last read, and hands the handshake to :attr:`current` (server and host name
    verified). asyncio and uvloop start every TLS connection with ``wrap_bio``."""

    watch: watch.CertWatch[KeyPair | None]
    current: ssl.SSLContext
    """Built from the files as they were last read (a new one for each change)."""
    _due: float

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        self.refresh()
        return self.current.wrap_bio(*args, **kwargs)

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self.refresh()
        return self.current.wrap_socket(*args, **kwargs)

    def refresh(self, *, force: bool = False) -> None:
        """Re-read the files if ``poll`` seconds have passed (or ``force``)."""
        now = time.monotonic()
        if force or now >= self._due:
            self._due = now + self.watch.poll
            self.watch.check()


@functools.cache
def context_for(tls: BusTls) -> RotatingContext:
    """The process's context for these files; raises PemError (a config error) if they
    cannot be used at start."""
    ctx = RotatingContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the server and its host name
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2

    def apply(pair: KeyPair | None) -> None:
        ctx.current = client_context(pair, ca=tls.ca)

    source: watch.Source | None = None
    if tls.cert:
        source = watch.files(tls.cert, tls.key, key_name="bus URL key")
    ctx.watch = watch.CertWatch[KeyPair | None](
        "bus tls", source or watch.no_cert, poll=tls.poll, grace=0, apply=apply, ca=tls.ca
    )
    ctx._due = time.monotonic() + tls.poll
    return ctx


def kafka_client(servers: str, tls: BusTls | None) -> dict[str, Any]:
    """The connection arguments of every aiokafka client (producer, consumer, admin):
    ``bootstrap_servers``, and SSL with the shared context when ``tls`` is set."""
    if tls is None:
        return {"bootstrap_servers": servers}
    return {
        "bootstrap_servers": servers,
        "security_protocol": "SSL",
        "ssl_context": context_for(tls),
    }
