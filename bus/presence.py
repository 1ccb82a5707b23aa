"""A live view of which adapters serve which systems, fed by their Presence heartbeats.

Kafka cannot say "no consumer" the way NATS says "no responders", and consumer-group
membership is unreliable on some brokers, so adapters announce themselves on the control
subject/topic and every node keeps this view with a TTL. It feeds fail-fast 503s, ``/readyz``
and the status endpoint alike, on both buses.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from busgate.contracts.wire import Presence


class PresenceView:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._expiry: dict[str, dict[str, float]] = {}
        self._capacity: dict[str, int] = {}
        self._partitions: dict[str, dict[str, tuple[int, ...]]] = {}

    def update(self, beat: Presence) -> None:
        now = self._clock()
        for nodes in self._expiry.values():
            nodes.pop(beat.node, None)
        if beat.ttl <= 0:  # an adapter saying goodbye
            self._capacity.pop(beat.node, None)
            self._partitions.pop(beat.node, None)
            return
        for system in beat.systems:
            self._expiry.setdefault(system, {})[beat.node] = now + beat.ttl
        self._capacity[beat.node] = beat.capacity
        self._partitions[beat.node] = beat.partitions

    def nodes(self, system: str) -> list[str]:
        now = self._clock()
        nodes = self._expiry.get(system, {})
        for node in [n for n, exp in nodes.items() if exp <= now]:
            del nodes[node]
        return sorted(nodes)

    def serves(self, system: str) -> bool:
        return bool(self.nodes(system))

    def partitions(self, system: str) -> list[int]:
        """The partitions of ``system``'s request topic that live adapters hold; empty when
        that is not known (an adapter that does not say, or a group between assignments)."""
        held: set[int] = set()
        for node in self.nodes(system):
            mine = self._partitions.get(node, {}).get(system)
            if mine is None:
                return []
            held.update(mine)
        return sorted(held)

    def snapshot(self) -> dict[str, list[str]]:
        return {system: self.nodes(system) for system in sorted(self._expiry)}
