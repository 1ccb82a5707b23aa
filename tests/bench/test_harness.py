"""Smoke test of the benchmark harness itself: a few hundred requests through the real
floor-nats processes (broker, runner, responder, edge), with the built-in Python load
generator so the suite does not need wrk. Checks the result's shape, zero errors, and that
every process the harness started is gone afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REQUESTS = 300

pytestmark = [pytest.mark.nats, pytest.mark.e2e, pytest.mark.timeout(60)]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:\tZ") for line in f)
    except OSError:
        return False


def test_floor_nats_smoke(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    cmd = [
        sys.executable,
        "-m",
        "bench",
        "--scenarios",
        "floor-nats",
        "--load",
        "python",
        "--requests",
        str(REQUESTS),
        "--rounds",
        "1",
        "--warmup",
        "0",
        "--connections",
        "8",
        "--no-install",
        "--output",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=50, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "floor-nats" in done.stdout and "Targets" in done.stdout

    result = json.loads(out.read_text())
    assert {"started", "finished", "machine", "settings", "scenarios", "targets"} <= set(result)
    assert result["errors"] == 0
    floor = result["scenarios"]["floor-nats"]
    assert floor["status"] == "ok", floor.get("reason")
    run = floor["throughput"]
    assert run["requests"] == REQUESTS
    assert run["errors"] == 0
    assert run["rps"] > 0
    assert 0 < run["p50_ms"] <= run["p99_ms"] <= run["p999_ms"]
    assert set(run["rss_mb"]) == {"runner", "responder", "edge", "nats-server"}
    assert all(mb > 0 for mb in run["rss_mb"].values())
    assert set(floor["idle_rss_mb"]) == {"runner", "responder", "edge"}
    # Scenarios that were not asked for are reported, not silently missing.
    assert result["scenarios"]["busgate-nats"]["status"] == "skipped"
    assert {t["status"] for t in result["targets"]} == {"SKIPPED"}

    pids = [*floor["pids"].values(), result["brokers"]["nats"]["pid"]]
    assert not [pid for pid in pids if _alive(pid)], "the harness left processes running"


def test_each_round_runs_the_scenarios_the_other_way_round_from_the_last() -> None:
    """A B, then B A: load drifting within a round favours no scenario of a ratio."""
    from bench.run import in_turn

    names = ["busgate-nats", "busgate-nats-traced", "busgate-nats-sampling0"]
    orders = [in_turn(names, r) for r in range(1, 5)]
    assert orders[0] == orders[2] == names
    assert orders[1] == orders[3] == names[::-1]
    # over two rounds every scenario has the same mean position
    positions = {n: sum(o.index(n) for o in orders[:2]) for n in names}
    assert len(set(positions.values())) == 1
