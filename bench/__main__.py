"""``python -m bench`` / ``make bench``: run the benchmark, print the table, write the JSON.

    python -m bench --duration 10 --rounds 2 --scenarios floor-nats,busgate-nats,latency

Defaults come from ``BENCH_DURATION``, ``BENCH_ROUNDS``, ``BENCH_SCENARIOS``, … when set.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from bench.report import render
from bench.run import Bench, Options
from bench.scenarios import ALL


def _env(name: str, default: str) -> str:
    return os.environ.get(f"BENCH_{name}", default)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def options(argv: list[str] | None = None) -> Options:
    d = Options()
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--scenarios",
        default=_env("SCENARIOS", ",".join(ALL)),
        help=f"comma-separated, from: {', '.join(ALL)} (default: all)",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=float(_env("DURATION", str(d.duration))),
        help="seconds of load per throughput run",
    )
    p.add_argument(
        "--latency-duration",
        type=float,
        default=float(_env("LATENCY_DURATION", str(d.latency_duration))),
        help="seconds per one-in-flight run",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=int(_env("ROUNDS", str(d.rounds))),
        help="A B A B alternations per mode",
    )
    p.add_argument("--connections", type=int, default=int(_env("CONNECTIONS", str(d.connections))))
    p.add_argument(
        "--threads",
        type=int,
        default=int(_env("THREADS", str(d.threads))),
        help="wrk threads (the servers share the same cores)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=float(_env("WARMUP", str(d.warmup))),
        help="seconds of unrecorded load before each run",
    )
    p.add_argument(
        "--load",
        choices=("wrk", "python"),
        default=_env("LOAD", d.load),
        help="load generator; python is the slow fallback for smoke tests",
    )
    p.add_argument(
        "--requests",
        type=int,
        default=int(_env("REQUESTS", "0")),
        help="python load only: requests per run instead of --duration",
    )
    p.add_argument(
        "--sse-counts",
        default=_env("SSE_COUNTS", "2000,10000"),
        help="idle stream counts for sse-idle",
    )
    p.add_argument("--output", type=Path, default=Path(_env("OUTPUT", str(d.output))))
    p.add_argument(
        "--isolate",
        default=_env("ISOLATE", ",".join(d.isolate)),
        help="buses whose stacks run one at a time, restarted per turn ('' = none)",
    )
    p.add_argument("--no-install", action="store_true", help="do not apt-get install wrk")
    a = p.parse_args(argv)
    chosen = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(ALL))
    if unknown:
        p.error(f"unknown scenario(s) {unknown}; known: {', '.join(ALL)}")
    return Options(
        scenarios=chosen,
        duration=a.duration,
        latency_duration=a.latency_duration,
        rounds=max(1, a.rounds),
        connections=max(1, a.connections),
        threads=max(1, a.threads),
        warmup=max(0.0, a.warmup),
        load=a.load,
        requests=max(0, a.requests),
        sse_counts=_ints(a.sse_counts),
        output=a.output,
        install=not a.no_install,
        isolate=tuple(b.strip() for b in a.isolate.split(",") if b.strip()),
    )


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM behaves like Ctrl-C: unwind, so every started process is stopped."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    opts = options(argv)
    signal.signal(signal.SIGTERM, _terminate)
    results = Bench(opts).run()
    print(render(results))
    print(f"\nwrote {opts.output}")
    if results.get("interrupted"):
        return 130
    failed = [n for n, e in results["scenarios"].items() if e.get("status") == "failed"]
    return 1 if failed or results.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
