"""Transports between edge nodes and adapters: NATS (default) and Kafka.

Both implement :class:`bus.base.Bus`; everything but moving bytes (correlation, presence,
deadlines, cancellation) lives in the base class, so the two behave alike.
"""

from __future__ import annotations

from bus.base import Bus, Responder


def from_url(url: str, *, node: str, prefix: str = "busgate") -> Bus:
    """A bus for ``nats://…`` or ``kafka://…`` (several servers separated by commas)."""
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("nats", "tls", "ws", "wss"):
        from bus.nats import NatsBus

        return NatsBus(url.split(","), node=node, prefix=prefix)
    if scheme == "kafka":
        try:
            from bus.kafka import KafkaBus
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError("Kafka needs aiokafka: pip install 'busgate[kafka]'") from exc
        servers = ",".join(part.split("://", 1)[-1] for part in url.split(","))
        return KafkaBus(servers, node=node, prefix=prefix)
    raise ValueError(f"unsupported bus URL {url!r}: use nats://host:port or kafka://host:port")


__all__ = ["Bus", "Responder", "from_url"]
