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


def _round(round_: int, rps: float, cpu_s: dict[str, float]) -> dict[str, object]:
    return {
        "round": round_,
        "rps": rps,
        "requests": int(rps * 4),
        "p50_ms": 20.0,
        "p99_ms": 40.0,
        "p999_ms": 50.0,
        "errors": 0,
        "rss_mb": {"edge": 60.0},
        "cpu_s": cpu_s,
    }


def test_a_ratio_target_shows_the_rounds_spread_and_the_cpu_ratio() -> None:
    """Per-round ratios on a noisy machine spread widely around their median: the target's
    note gives the middle half of them, and the ratio of CPU per request beside it."""
    from bench.run import summarise

    base_rps = [1000.0, 1000.0, 1000.0, 1000.0, 1000.0]
    traced_rps = [700.0, 850.0, 900.0, 950.0, 1100.0]
    # 500 µs per request untraced, 550 traced, whatever the round's req/s
    base = [
        _round(i + 1, r, {"edge": r * 4 * 300e-6, "adapter": r * 4 * 200e-6})
        for i, r in enumerate(base_rps)
    ]
    traced = [
        _round(i + 1, r, {"edge": r * 4 * 330e-6, "adapter": r * 4 * 220e-6})
        for i, r in enumerate(traced_rps)
    ]
    results = {
        "scenarios": {
            "busgate-nats": {"status": "ok", "floor": None, "throughput": {"runs": base}},
            "busgate-nats-traced": {
                "status": "ok",
                "floor": "busgate-nats",
                "throughput": {"runs": traced},
            },
        }
    }
    summarise(results)
    entry = results["scenarios"]["busgate-nats-traced"]
    assert entry["ratio"] == 0.9
    assert entry["ratio_middle_half"] == [0.775, 1.025]
    assert entry["cpu_ratio"] == round(500 / 550, 3)
    (row,) = [t for t in results["targets"] if t["target"].startswith("busgate-nats-traced ")]
    assert row["status"] == "PASS"
    assert row["note"] == "rounds' middle half 0.775-1.025; by CPU/request x0.909"
