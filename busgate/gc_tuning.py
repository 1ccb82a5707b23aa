"""The cyclic garbage collector of a long-running node (edge, adapter), set once it serves.

CPython runs a young collection every 700 net allocations of container objects, and a full
one, over every object the process holds, every hundred young ones or so. A node allocates a
few dozen containers per call, nearly all freed at once by reference counting, yet they
counted: in the bench an adapter ran about 3,900 collections in 55,000 calls, 30 of them
full ones over its ~50,000 startup objects (modules, config, the app) at ~27 ms each: 1.4 s
of the run, ~25 µs a call (December 2026, timed with ``gc.callbacks``). Tracing, which
keeps each call's spans for a flush, made it worse (the edge: twice the collections).

So, once serving: what startup made is frozen (``gc.freeze``: a permanent generation no
collection scans; it lives as long as the process anyway), and the young threshold raised so
that short-lived containers rarely trigger a collection. Cyclic garbage is still collected,
in larger batches: memory grows by at most a young generation (thousands of objects).
"""

from __future__ import annotations

import gc

THRESHOLDS = (10_000, 20, 100)
"""A young collection every 10,000 net container allocations (CPython: 700); the older
generations' ratios raised from CPython's (10, 10) as well, since each young pass now covers
far more. With these an adapter ran 2 collections in the bench's 40,000 calls, not 3,900."""


def settle() -> None:
    """Call once the node serves: collect what startup left, freeze the rest, raise the
    young threshold."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
