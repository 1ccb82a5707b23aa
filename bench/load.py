"""Load generators, each a separate process: ``wrk`` for the benchmark, a small Python one
(``bench.pyload``) for the harness's own smoke test, so the test suite needs no wrk."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.procs import die_with_parent

BODY = b'{"hello":"world"}'
LUA = Path(__file__).with_name("wrk") / "post.lua"
MARK = "BENCH_JSON "


@dataclass
class LoadResult:
    """What one load run measured; latencies in milliseconds."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    mean_ms: float
    max_ms: float
    errors: int
    error_kinds: dict[str, int]
    connections: int
    tool: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def parse(output: str, connections: int, tool: str) -> LoadResult:
    """Read the ``BENCH_JSON`` line that ``post.lua``'s ``done()`` (or pyload) prints."""
    for line in output.splitlines():
        if line.startswith(MARK):
            raw = json.loads(line[len(MARK) :])
            break
    else:
        raise RuntimeError(f"{tool} printed no result:\n{output[-2000:]}")
    seconds = raw["duration_us"] / 1e6
    lat = raw["latency_us"]
    requests = int(raw["requests"])
    kinds = {k: int(v) for k, v in raw["errors"].items() if v}
    ms = (lambda us: round(max(us, 0) / 1000, 3)) if requests else (lambda us: 0.0)
    return LoadResult(
        requests=requests,
        seconds=round(seconds, 3),
        rps=round(requests / seconds, 1) if seconds else 0.0,
        p50_ms=ms(lat["p50"]),
        p99_ms=ms(lat["p99"]),
        p999_ms=ms(lat["p999"]),
        mean_ms=ms(lat["mean"]),
        max_ms=ms(lat["max"]),
        errors=sum(kinds.values()),
        error_kinds=kinds,
        connections=connections,
        tool=tool,
    )


def ensure_wrk(install: bool = True) -> str | None:
    """Find ``wrk``; as root, install Debian's package when missing (``apt-get update`` first
    if the package lists do not know it yet)."""
    found = shutil.which("wrk")
    if found or not install or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def apt(*args: str) -> int:
        out = subprocess.DEVNULL
        done = subprocess.run(["apt-get", *args], stdout=out, stderr=out, env=env, check=False)
        return done.returncode

    print("bench: installing wrk (apt-get install wrk)…", file=sys.stderr)
    if apt("install", "-y", "-q", "wrk") != 0:
        apt("update", "-q")
        apt("install", "-y", "-q", "wrk")
    return shutil.which("wrk")


def _header_args(flag: str, headers: dict[str, str]) -> list[str]:
    return [a for k, v in headers.items() for a in (flag, f"{k}: {v}")]


def run_wrk(
    url: str,
    *,
    connections: int,
    seconds: float,
    threads: int = 1,
    headers: dict[str, str] | None = None,
    wrk: str = "wrk",
) -> LoadResult:
    threads = max(1, min(threads, connections))
    cmd = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        *_header_args("-H", headers or {}),
        url,
    ]
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        check=False,
        timeout=seconds + 60,
        preexec_fn=die_with_parent,
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    return parse(done.stdout, connections, "wrk")


def run_python(
    url: str,
    *,
    connections: int,
    seconds: float = 0.0,
    requests: int = 0,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """The fallback generator: ``requests`` calls (or ``seconds`` of them), in its own process."""
    cmd = [
        sys.executable,
        "-m",
        "bench.pyload",
        url,
        "--connections",
        str(connections),
        "--requests",
        str(requests),
        "--seconds",
        str(seconds),
        *_header_args("--header", headers or {}),
    ]
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": root}
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        check=False,
        timeout=seconds + 120,
        cwd=root,
        env=env,
        preexec_fn=die_with_parent,
    )
    if done.returncode != 0:
        raise RuntimeError(f"pyload failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return parse(done.stdout, connections, "python")
