"""Subject and topic names, all under one configurable prefix (see DESIGN.md)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Names:
    prefix: str = "busgate"

    def request(self, system: str) -> str:
        return f"{self.prefix}.req.{system}"

    def group(self, system: str) -> str:
        """Queue group (NATS) / consumer group (Kafka) shared by a system's adapters."""
        return f"{self.prefix}.adapter.{system}"

    def reply(self, node: str) -> str:
        return f"{self.prefix}.reply.{node}"

    def command(self, name: str = "") -> str:
        return f"{self.prefix}.cmd.{name}" if name else f"{self.prefix}.cmd"

    def track(self, channel: str = "") -> str:
        return f"{self.prefix}.track.{channel}" if channel else f"{self.prefix}.track"

    def audit(self, channel: str = "") -> str:
        """Audit events: ``PREFIX.audit.CHANNEL`` on NATS, one topic ``PREFIX.audit`` on
        Kafka (as for tracking events)."""
        return f"{self.prefix}.audit.{channel}" if channel else f"{self.prefix}.audit"

    def trace(self) -> str:
        """Finished spans: subjects ``PREFIX.trace.T.R`` on NATS (a JetStream stream over
        ``PREFIX.trace.>``; T and R: buckets of trace and request ids, ``bus.trace_export``),
        topic ``PREFIX.trace`` on Kafka (keyed by the trace id's bucket)."""
        return f"{self.prefix}.trace"

    @property
    def control(self) -> str:
        return f"{self.prefix}.control"
