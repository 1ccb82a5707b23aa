"""Transports between edge nodes and adapters: NATS (default) and Kafka.

Both implement :class:`bus.base.Bus`; everything but moving bytes (correlation, presence,
deadlines, cancellation) lives in the base class, so the two behave alike.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qsl

from busgate.bus import limits
from busgate.bus.base import Bus, Responder
from busgate.bus.security import BusTls, context_for, kafka_client

TLS_OPTIONS: dict[str, tuple[str, type]] = {
    "ca": ("tls_ca", str),
    "cert": ("tls_cert", str),
    "key": ("tls_key", str),
    "poll": ("tls_poll", float),
}
"""``tls://…`` (NATS) and ``kafka+ssl://…`` options, the same for both: PEM files, the
servers verified against ``ca`` (else the system's trust store), with a client certificate
(``cert`` and ``key``) for servers that ask for one; the files are re-read at most every
``poll`` seconds (default 10) when a connection is made (see ``bus.security``)."""

KAFKA_OPTIONS: dict[str, tuple[str, type]] = {
    "partitions": ("request_partitions", int),
    "replication": ("replication_factor", int),
    "session_timeout": ("session_timeout", float),
    "fetch_wait_ms": ("fetch_wait_ms", int),
    "idle_fetch_wait_ms": ("idle_fetch_wait_ms", int),
    "max_request_size": ("max_request_size", int),
}
"""``kafka://…?name=value`` options: name → (KafkaBus argument, type). ``partitions`` (of
the request topics busgate creates; at least the number of adapters a system will have,
since a partition is read by one adapter of the group) and ``replication`` matter on a real
cluster; the fetch waits are explained in ``bus.kafka.transport``; ``max_request_size``
(bytes, default 1 MiB) is the producers' and should not exceed the brokers'
``message.max.bytes``."""

NATS_OPTIONS: dict[str, tuple[str, type]] = {
    "max_payload": ("max_payload", int),
    **TLS_OPTIONS,
}
"""``nats://…?max_payload=N``: the servers' ``max_payload`` (bytes) when it is not the
default 1 MiB, so that what is checked without connecting (``busgate config check``) knows
it; a connected node takes the server's own, or this if lower. ``tls://…?ca=PEM&cert=PEM&
key=PEM``: see ``TLS_OPTIONS``."""


def parse_url(url: str) -> tuple[str, list[str], dict[str, Any]]:
    """``(scheme, servers, transport options)`` of a bus URL; ValueError says what is wrong.

    ``nats://a:4222,nats://b:4222`` or ``kafka://a:9092,b:9092?partitions=12&replication=3``;
    ``kafka+ssl://a:9093?ca=ca.pem&cert=node.pem&key=node.key`` for Kafka over SSL. The TLS
    options become one ``tls`` option, a :class:`~busgate.bus.security.BusTls`.
    """
    base, _, query = url.partition("?")
    scheme = base.split("://", 1)[0].lower()
    if scheme in ("nats", "tls", "ws", "wss"):
        return "nats", base.split(","), _tls(url, _options(url, query, NATS_OPTIONS), always=False)
    if scheme not in ("kafka", "kafka+ssl"):
        raise ValueError(
            f"unsupported bus URL {url!r}: use nats://host:port, tls://host:port, "
            "kafka://host:port or kafka+ssl://host:port"
        )
    servers = [part.split("://", 1)[-1] for part in base.split(",")]
    options = _options(url, query, {**KAFKA_OPTIONS, **TLS_OPTIONS})
    if scheme == "kafka" and any(name in options for name, _ in TLS_OPTIONS.values()):
        raise ValueError(f"bus URL {url!r}: ca, cert, key and poll are for kafka+ssl:// URLs")
    return "kafka", servers, _tls(url, options, always=scheme == "kafka+ssl")


def _tls(url: str, options: dict[str, Any], *, always: bool) -> dict[str, Any]:
    """Fold the TLS options into ``tls``; ``always``: even with none set (``kafka+ssl``)."""
    files = {name: options.pop(argument) for name, (argument, _) in TLS_OPTIONS.items()
             if argument in options}  # fmt: skip
    if files or always:
        try:
            options["tls"] = BusTls(**files)
        except ValueError as exc:
            raise ValueError(f"bus URL {url!r}: {exc}") from None
    return options


def kafka_client_of(url: str) -> dict[str, Any]:
    """The aiokafka connection arguments for a ``kafka://`` or ``kafka+ssl://`` URL, for
    the clients a process makes besides its bus's (see ``bus.security.kafka_client``)."""
    _, servers, options = parse_url(url)
    return kafka_client(",".join(servers), options.get("tls"))


def nats_tls_of(url: str) -> ssl.SSLContext | None:
    """The TLS context for a NATS URL's connections, None when it sets no TLS option."""
    _, _, options = parse_url(url)
    tls = options.get("tls")
    return context_for(tls) if tls is not None else None


def _options(url: str, query: str, known: dict[str, tuple[str, type]]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as exc:
        raise ValueError(f"bus URL {url!r}: {exc}") from None
    for name, value in pairs:
        if name not in known:
            raise ValueError(f"bus URL {url!r}: unknown option {name!r}; known: {', '.join(known)}")
        argument, kind = known[name]
        if kind is str:
            if not value:
                raise ValueError(f"bus URL {url!r}: {name} must not be empty")
            options[argument] = value
            continue
        try:
            options[argument] = number = kind(value)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise ValueError(f"bus URL {url!r}: {name} must be {what}") from None
        if number <= 0:
            raise ValueError(f"bus URL {url!r}: {name} must be positive")
    return options


def max_message_of(url: str) -> int:
    """What a bus at ``url`` carries per message as far as the URL tells, without
    connecting: its ``max_payload`` / ``max_request_size`` option, else the 1 MiB default
    of both buses (see ``bus.limits``)."""
    _, _, options = parse_url(url)
    declared = options.get("max_payload") or options.get("max_request_size")
    return limits.carried(declared or limits.DEFAULT_MAX_MESSAGE)


def from_url(url: str, *, node: str, prefix: str = "busgate") -> Bus:
    """A bus for ``nats://…`` or ``kafka://…`` (see :func:`parse_url`)."""
    scheme, servers, options = parse_url(url)
    if scheme == "nats":
        from busgate.bus.nats import NatsBus

        return NatsBus(servers, node=node, prefix=prefix, **options)
    try:
        from busgate.bus.kafka import KafkaBus
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("Kafka needs aiokafka: pip install 'busgate[kafka]'") from exc
    return KafkaBus(servers, node=node, prefix=prefix, **options)


__all__ = [
    "Bus",
    "Responder",
    "from_url",
    "kafka_client_of",
    "max_message_of",
    "nats_tls_of",
    "parse_url",
]
