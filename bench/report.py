"""The human side of the results: tables of the numbers, ratios and PASS/MISS targets."""

from __future__ import annotations

from typing import Any

HEADER = ["scenario", "status", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "errors"]
HEADER += ["CPU µs/req", "RSS MB at end of load", "vs floor"]
BROKERS = ("nats-server", "tansu")


def _cpu(data: dict[str, Any]) -> str:
    """CPU per request of the stack's own processes (the broker is shared, so left out)."""
    per = data.get("cpu_us_per_request", {})
    mine = [us for name, us in per.items() if name not in BROKERS]
    return f"{sum(mine):,}" if mine else "-"


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*header), line.format(*("-" * w for w in widths))]
    out += [line.format(*r) for r in rows]
    return "\n".join(out)


def _rss(rss: dict[str, float]) -> str:
    return " ".join(f"{name}={mb:.0f}" for name, mb in rss.items()) or "-"


def render(results: dict[str, Any]) -> str:
    scenarios: dict[str, Any] = results["scenarios"]
    parts = [
        f"busgate bench — {results['machine']['cpus']} CPUs, load: {results['load_tool']}, "
        f"runner: {results['runner']}",
    ]
    for mode, title in (
        ("throughput", "Throughput ({c} connections)"),
        ("latency", "Latency (one request in flight)"),
    ):
        selected = results["settings"]["scenarios"]
        if mode == "latency" and "latency" not in selected:
            continue
        rows = []
        for name, entry in scenarios.items():
            if "bus" not in entry:
                continue
            data = entry.get(mode)
            if entry["status"] != "ok" or not data or "rps" not in data:
                if entry["status"] in ("pending", "failed"):
                    reason = (entry.get("reason") or "").splitlines()[0][:70]
                    rows.append([name, entry["status"].upper(), *["-"] * 7, reason])
                continue
            if mode == "throughput":
                vs = f"x{entry['ratio']:.2f} of {entry['floor']}" if entry.get("ratio") else ""
            else:
                vs = f"p99 {entry['p99_delta_ms']:+.2f} ms" if "p99_delta_ms" in entry else ""
            rows.append(
                [
                    name,
                    "ok",
                    _fmt(data["rps"], 0),
                    _fmt(data["p50_ms"]),
                    _fmt(data["p99_ms"]),
                    _fmt(data["p999_ms"]),
                    str(data["errors"]),
                    _cpu(data),
                    _rss(data["rss_mb"]),
                    vs,
                ]
            )
        if rows:
            connections = results["settings"]["connections"]
            parts += [
                "",
                title.format(c=connections),
                _table(
                    HEADER,
                    rows,
                ),
            ]
    sse = scenarios.get("sse-idle", {})
    if sse.get("status") == "ok":
        rows = [["0 (idle)", "-", "-", _fmt(sse["idle_rss_mb"], 1)]]
        for count, data in sse["streams"].items():
            rows.append([count, str(data["opened"]), str(data["failed"]), _fmt(data["rss_mb"], 1)])
        parts += [
            "",
            "SSE idle streams (one edge)",
            _table(["streams", "open", "failed", "edge RSS MB"], rows),
        ]
    elif sse.get("status") in ("pending", "failed"):
        parts += ["", f"SSE idle streams: {sse['status'].upper()} — {sse.get('reason')}"]
    rows = []
    for t in results.get("targets", []):
        value = t["value"]
        shown = "-" if value is None else (f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}")
        note = (t.get("note") or "").splitlines()[0][:70] if t.get("note") else ""
        rows.append([t["status"], t["target"], shown, note])
    parts += ["", "Targets", _table(["", "target", "measured", "note"], rows)]
    return "\n".join(parts)
