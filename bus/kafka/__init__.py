"""The Kafka transport (aiokafka): topics per system, consumer groups for adapters."""

from busgate.bus.kafka.transport import KafkaBus

__all__ = ["KafkaBus"]
