"""A tiny load generator (aiohttp client) for the harness's smoke test, where wrk may be
missing. Slower than wrk, so never used for the published numbers. Prints the same
``BENCH_JSON`` line as ``wrk/post.lua``.

    python -m bench.pyload URL --connections 8 --requests 300
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp

from bench.load import BODY, MARK


def percentile(sorted_us: list[int], pct: float) -> int:
    if not sorted_us:
        return 0
    index = min(len(sorted_us) - 1, max(0, round(pct / 100 * len(sorted_us)) - 1))
    return sorted_us[index]


async def load(args: argparse.Namespace) -> dict[str, object]:
    headers = {"Content-Type": "application/json"}
    for header in args.header:
        name, _, value = header.partition(":")
        headers[name.strip()] = value.strip()
    latencies: list[int] = []
    errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    budget = args.requests or 10**12
    deadline = time.perf_counter() + (args.seconds or 1e9)
    started = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=10)
    connector = aiohttp.TCPConnector(limit=args.connections, ssl=False)  # measure, not verify

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal budget
            while budget > 0 and time.perf_counter() < deadline:
                budget -= 1
                t0 = time.perf_counter()
                try:
                    async with session.post(args.url, data=BODY, headers=headers) as resp:
                        await resp.read()
                        if resp.status >= 400:
                            errors["status"] += 1
                except TimeoutError:
                    errors["timeout"] += 1
                except aiohttp.ClientConnectionError:
                    errors["read"] += 1
                latencies.append(int((time.perf_counter() - t0) * 1e6))

        await asyncio.gather(*(worker() for _ in range(args.connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "duration_us": int(elapsed * 1e6),
        "bytes": 0,
        "errors": errors,
        "latency_us": {
            "min": latencies[0] if latencies else 0,
            "mean": sum(latencies) / len(latencies) if latencies else 0,
            "max": latencies[-1] if latencies else 0,
            "p50": percentile(latencies, 50),
            "p90": percentile(latencies, 90),
            "p99": percentile(latencies, 99),
            "p999": percentile(latencies, 99.9),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--requests", type=int, default=0, help="stop after N (0 = by time)")
    parser.add_argument("--seconds", type=float, default=0.0, help="stop after S (0 = by count)")
    parser.add_argument("--header", action="append", default=[], help="'Name: value'")
    args = parser.parse_args()
    if not args.requests and not args.seconds:
        parser.error("give --requests or --seconds")
    print(MARK + json.dumps(asyncio.run(load(args))))


if __name__ == "__main__":
    main()
