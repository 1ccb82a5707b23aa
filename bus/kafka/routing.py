"""Which partition a message goes to: by key, and around adapters that are gone."""

from __future__ import annotations

import random
import zlib


def by_key(key: bytes, partitions: list[int]) -> int:
    """One of ``partitions`` (sorted) by key. CRC-32, because aiokafka's default murmur2 is
    pure Python and costs more than the rest of sending a message."""
    return partitions[zlib.crc32(key) % len(partitions)]


def partition(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """The producer's partitioner: by key (request id, or node for replies and control
    messages), so a stream's steps stay in order."""
    if key is None:
        return random.choice(available or all_partitions)
    return by_key(key, sorted(all_partitions))


def live_partition(held: list[int], known: set[int] | None, key: bytes) -> int | None:
    """A partition of a request topic that a live adapter holds (``held``, from the Presence
    of the system's adapters, restricted to the partitions the producer ``known``s), or None
    to let the partitioner choose among all: an adapter that said goodbye, or fell silent,
    has its partitions skipped at once, while its group still takes seconds to hand them to
    the others."""
    if not held or known is None:
        return None
    alive = [p for p in held if p in known]
    return by_key(key, alive) if alive else None
