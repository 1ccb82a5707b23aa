"""``gc_tuning.settle`` (run by a serving edge and adapter), in a process of its own: it
changes the whole interpreter's collector."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import gc
from busgate import gc_tuning
garbage = []
garbage.append(garbage)  # a cycle startup left behind
del garbage
before = gc.get_freeze_count()
gc_tuning.settle()
print(before, gc.get_freeze_count() > 1000, gc.get_threshold() == gc_tuning.THRESHOLDS)
cycle = []
cycle.append(cycle)
del cycle
print(gc.collect())  # cycles made after settle are still collected
"""


def test_settle_freezes_startup_raises_the_threshold_and_still_collects_cycles():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["0", "True", "True", "1"]
