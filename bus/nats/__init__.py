"""The NATS transport (nats-py): core NATS for calls, JetStream for durable commands."""

from busgate.bus.nats.transport import NatsBus

__all__ = ["NatsBus"]
