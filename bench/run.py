"""One benchmark run: brokers, stacks, load in alternation, RSS, ratios, targets.

The stacks of one bus share one broker and take turns under load (A B A B), so drifting
machine noise (other work on the box, thermal, page cache) hits the floor and busgate alike,
and the ratio of the two is what the targets judge. NATS stacks stay up side by side; Kafka
stacks run one at a time (see ``Bench.run_bus``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import median, quantiles
from typing import Any

from bench import load as loadgen
from bench.procs import (
    HOST,
    RESULTS,
    ROOT,
    Proc,
    Processes,
    ProcessFailed,
    ProcSpec,
    Ready,
    die_with_parent,
    rss_kb,
    unverified,
)
from bench.scenarios import (
    ALL,
    STACKS,
    STREAM,
    STREAM_BODY,
    TARGETS,
    Env,
    Pending,
    Stack,
    busgate,
    find_busgate,
    has_command,
)
from busgate.brokers import NatsServer, TansuBroker


@dataclass
class Options:
    scenarios: list[str] = field(default_factory=lambda: list(ALL))
    duration: float = 6.0
    latency_duration: float = 4.0
    rounds: int = 3
    """Short runs, more alternations: bursts of other work on the box cancel out better."""
    connections: int = 64
    threads: int = 1
    warmup: float = 1.0
    load: str = "wrk"
    requests: int = 0
    """Python load only: requests per run instead of ``duration``."""
    sse_counts: list[int] = field(default_factory=lambda: [2000, 10_000])
    output: Path = RESULTS / "latest.json"
    install: bool = True
    probe_timeout: float = 45.0
    isolate: tuple[str, ...] = ("kafka",)
    """Buses whose stacks run one at a time (started and stopped for each turn)."""


@dataclass
class Live:
    """A started stack and its processes."""

    stack: Stack
    procs: list[Proc]


class BenchError(RuntimeError):
    """A scenario could not be measured; the message says why."""


class PendingError(BenchError):
    """The stack runs but cannot do what the scenario measures yet."""


def _post(
    url: str, headers: dict[str, str], body: bytes = loadgen.BODY, timeout: float = 5.0
) -> tuple[int, bytes]:
    req = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json", **headers}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=unverified(url)) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError as exc:
        return 0, str(exc).encode()


def probe(stack: Stack, timeout: float) -> None:
    """Wait until one request makes the whole trip and comes back right (for Kafka this
    covers the consumer group join; for busgate, the edge seeing the adapter)."""
    end = time.monotonic() + timeout
    status, body = 0, b""
    while time.monotonic() < end:
        status, body = _post(stack.url, stack.headers)
        if stack.expect(status, body):
            return
        time.sleep(0.2)
    raise BenchError(f"no correct answer from {stack.url} in {timeout} s: {status} {body[:300]!r}")


def _sum_rss(procs: list[Proc]) -> dict[str, float]:
    return {p.spec.name: p.rss_mb() for p in procs}


def _cpu(procs: list[Proc]) -> dict[str, float]:
    return {p.spec.name: p.cpu() for p in procs}


class Bench:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.workdir = RESULTS / "run"
        self.env = Env(
            python=sys.executable,
            busgate=find_busgate(),
            busgate_runner=False,
            workdir=self.workdir,
        )
        self.env.busgate_runner = has_command(self.env.busgate, "runner", "rpc")
        self.wrk: str | None = None
        self.results: dict[str, Any] = {}

    # --- load -----------------------------------------------------------------------------

    def _load(
        self, stack: Stack, connections: int, seconds: float, *, warm: bool = False
    ) -> loadgen.LoadResult:
        if self.opts.load == "wrk":
            assert self.wrk is not None
            return loadgen.run_wrk(
                stack.url,
                connections=connections,
                seconds=seconds,
                threads=1 if connections == 1 else self.opts.threads,
                headers=stack.headers,
                wrk=self.wrk,
            )
        requests = 0 if warm or not self.opts.requests else self.opts.requests
        return loadgen.run_python(
            stack.url,
            connections=connections,
            seconds=0.0 if requests else seconds,
            requests=requests,
            headers=stack.headers,
        )

    def measure(self, live: Live, mode: str, broker: Proc) -> dict[str, Any]:
        """One measured run: a short warm-up, the load, then RSS and CPU of every process."""
        latency = mode == "latency"
        connections = 1 if latency else self.opts.connections
        seconds = self.opts.latency_duration if latency else self.opts.duration
        if self.opts.warmup > 0:
            self._load(live.stack, connections, self.opts.warmup, warm=True)
        procs = [*live.procs, broker]
        before = _cpu(procs)
        result = self._load(live.stack, connections, seconds).to_dict()
        after = _cpu(procs)
        result["rss_mb"] = _sum_rss(procs)
        result["cpu_s"] = {k: round(after[k] - before[k], 2) for k in after}
        return result

    # --- stacks ---------------------------------------------------------------------------

    def start_stack(self, procs: Processes, stack: Stack) -> Live:
        started = [procs.start(spec, tag=stack.name) for spec in stack.processes]
        live = Live(stack, started)
        try:
            probe(stack, self.opts.probe_timeout)
        except BenchError as exc:
            tails = "\n".join(f"--- {p.spec.name} ({p.log}):\n{p.tail(8)}" for p in started)
            raise BenchError(f"{exc}\n{tails}") from None
        if stack.check_rejects:
            status, body = _post(stack.url, {})
            if status not in (401, 403):
                raise PendingError(
                    f"auth not enforced yet: a request without the token got {status} "
                    f"{body[:120]!r}"
                )
        return live

    def broker(self, procs: Processes, bus: str) -> tuple[Proc, str, Path | None]:
        if bus == "nats":
            nats = NatsServer()
            spec = ProcSpec("nats-server", nats.command(), Ready(port=nats.port), under_test=False)
            return procs.start(spec, tag="broker"), nats.url, Path(nats.store)
        tansu = TansuBroker()
        spec = ProcSpec("tansu", tansu.command(), Ready(port=tansu.port), under_test=False)
        return procs.start(spec, tag="broker"), tansu.url, None

    def run_bus(self, bus: str, names: list[str], sse: bool) -> None:
        """Everything on one broker: the stacks take turns under load, then SSE.

        On NATS the stacks run side by side and only the load alternates. On Kafka (see
        ``Options.isolate``) each stack runs alone for its turn and is stopped after it:
        idle consumers keep polling the broker, and with both stacks up the one under load
        measured about twice its one-in-flight latency.
        """
        modes = [m for m in ("throughput", "latency") if self._wants(m, names)]
        with Processes() as procs:
            store: Path | None = None
            try:
                broker, url, store = self.broker(procs, bus)
                if bus in self.opts.isolate:
                    for round_ in range(1, self.opts.rounds + 1):
                        for name in in_turn(names, round_):
                            if self.results["scenarios"][name]["status"] in ("pending", "failed"):
                                continue
                            live = self.bring_up(procs, name, url)
                            for mode in modes:
                                if name in live:
                                    self.turn(procs, live, name, mode, round_, broker)
                            if name in live:
                                procs.stop(name)
                else:
                    live = {}
                    for name in names:
                        live.update(self.bring_up(procs, name, url))
                    for mode in modes:
                        for round_ in range(1, self.opts.rounds + 1):
                            for name in in_turn(list(live), round_):
                                self.turn(procs, live, name, mode, round_, broker)
                self.results["brokers"][bus] = {"rss_mb": broker.rss_mb(), "pid": broker.pid}
                if sse:
                    self.sse_idle(procs, url)
            finally:
                procs.stop()
                if store is not None:
                    shutil.rmtree(store, ignore_errors=True)

    def bring_up(self, procs: Processes, name: str, url: str) -> dict[str, Live]:
        """Build and start one stack; record it as ok, pending or failed."""
        entry = self.results["scenarios"][name]
        built = STACKS[name].build(self.env, url)
        if isinstance(built, Pending):
            entry.update(status="pending", reason=built.reason)
            return {}
        try:
            live = self.start_stack(procs, built)
        except PendingError as exc:
            entry.update(status="pending", reason=str(exc))
            procs.stop(built.name)
            return {}
        except (BenchError, ProcessFailed) as exc:
            entry.update(status="failed", reason=str(exc))
            procs.stop(built.name)
            print(f"bench: {name} failed:\n{exc}", file=sys.stderr)
            return {}
        first = entry["status"] != "ok"
        entry.update(
            status="ok",
            reason=None,
            url=built.url,
            processes={p.spec.name: p.spec.argv for p in live.procs},
            pids={p.spec.name: p.pid for p in live.procs},
        )
        if first:
            entry["idle_rss_mb"] = _sum_rss(live.procs)
            self._say(f"{name}: up, idle RSS {entry['idle_rss_mb']}")
        return {name: live}

    def turn(
        self,
        procs: Processes,
        live: dict[str, Live],
        name: str,
        mode: str,
        round_: int,
        broker: Proc,
    ) -> None:
        """One stack's turn under load; a stack that fails leaves the run, the rest go on."""
        stack = live[name]
        self._say(f"{name}: {mode} round {round_}/{self.opts.rounds}")
        try:
            run = self.measure(stack, mode, broker)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            self._fail(procs, live, name, f"{mode}: {exc}")
            return
        run["round"] = round_
        self.results["scenarios"][name].setdefault(mode, {"runs": []})["runs"].append(run)
        dead = [p for p in stack.procs if not p.alive()]
        if dead:
            tails = "\n".join(f"--- {p.spec.name}:\n{p.tail(8)}" for p in dead)
            self._fail(procs, live, name, f"{mode}: died under load\n{tails}")

    def _fail(self, procs: Processes, live: dict[str, Live], name: str, reason: str) -> None:
        """Take a stack out of the run; the others go on."""
        self.results["scenarios"][name].update(status="failed", reason=reason)
        print(f"bench: {name} failed: {reason}", file=sys.stderr)
        procs.stop(live.pop(name).stack.name)

    def _wants(self, mode: str, names: list[str]) -> bool:
        if mode == "latency":
            return "latency" in self.opts.scenarios
        return any(n in self.opts.scenarios for n in names)

    # --- SSE ------------------------------------------------------------------------------

    def sse_idle(self, procs: Processes, bus_url: str) -> None:
        """RSS of one fresh busgate edge holding N idle streams, for each N."""
        entry = self.results["scenarios"]["sse-idle"]
        built = busgate(self.env, bus_url, name="busgate-sse")
        if isinstance(built, Pending):
            entry.update(status="pending", reason=built.reason)
            return
        try:
            live = self.start_stack(procs, built)
        except (BenchError, ProcessFailed) as exc:
            entry.update(status="failed", reason=str(exc))
            return
        edge = next(p for p in live.procs if p.spec.name == "edge")
        url = f"http://{HOST}:{built.edge_port}{STREAM}"
        status, body = self._stream_probe(url)
        if status in (404, 405):
            entry.update(status="pending", reason=f"POST {STREAM} answered {status}: no SSE yet")
            procs.stop(built.name)
            return
        if status != 200:
            entry.update(status="failed", reason=f"POST {STREAM} answered {status} {body!r}")
            procs.stop(built.name)
            return
        entry.update(
            status="ok",
            reason=None,
            url=url,
            pids={p.spec.name: p.pid for p in live.procs},
            idle_rss_mb=edge.rss_mb(),
            streams={},
        )
        for count in self.opts.sse_counts:
            self._say(f"sse-idle: {count} streams")
            entry["streams"][str(count)] = self._hold(url, count, edge)
        procs.stop(built.name)

    def _stream_probe(self, url: str) -> tuple[int, str]:
        """Open one stream, read its head, close it."""
        req = urllib.request.Request(
            url,
            data=STREAM_BODY,
            headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                kind = resp.headers.get("Content-Type", "")
                if "text/event-stream" not in kind:
                    return 415, kind
                return int(resp.status), kind
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()[:200].decode(errors="replace")
        except OSError as exc:
            return 0, str(exc)

    def _hold(self, url: str, count: int, edge: Proc) -> dict[str, Any]:
        cmd = [sys.executable, "-m", "bench.sse_hold", url, "--count", str(count)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        holder = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=die_with_parent,
        )
        try:
            assert holder.stdout is not None
            line = holder.stdout.readline().split(maxsplit=3)
            if not line or line[0] != "OPEN":
                return {"opened": 0, "failed": count, "error": "holder died"}
            time.sleep(2.0)  # let the edge settle (first steps sent, buffers trimmed)
            rss = edge.rss_mb()
            return {
                "opened": int(line[1]),
                "failed": int(line[2]),
                "first_error": line[3].strip() if len(line) > 3 and int(line[2]) else None,
                "rss_mb": rss,
                "holder_rss_mb": round(rss_kb(holder.pid) / 1024, 1),
            }
        finally:
            with contextlib.suppress(OSError):
                assert holder.stdin is not None
                holder.stdin.close()
            try:
                holder.wait(15)
            except subprocess.TimeoutExpired:
                holder.kill()
                holder.wait()

    # --- whole run ------------------------------------------------------------------------

    def _say(self, text: str) -> None:
        print(f"bench: {text}", file=sys.stderr, flush=True)

    def run(self) -> dict[str, Any]:
        opts = self.opts
        self.workdir.mkdir(parents=True, exist_ok=True)
        if opts.load == "wrk":
            self.wrk = loadgen.ensure_wrk(opts.install)
            if self.wrk is None:
                raise SystemExit(
                    "bench: wrk is missing (apt-get install wrk), or use --load python"
                )
        self.results = {
            "version": 1,
            "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "system": platform.platform(),
            },
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
            "load_tool": self._tool_version(),
            "runner": self.env.runner_name,
            "busgate_cli": " ".join(self.env.busgate) if self.env.busgate else None,
            "brokers": {},
            "scenarios": {
                name: {"status": "skipped", "reason": "not selected"}
                | ({"bus": STACKS[name].bus, "floor": STACKS[name].floor} if name in STACKS else {})
                for name in ALL
            },
        }
        wanted = [n for n in STACKS if n in opts.scenarios]
        if not wanted and "latency" in opts.scenarios:
            wanted = list(STACKS)
        sse = "sse-idle" in opts.scenarios
        interrupted = False
        try:
            for bus in ("nats", "kafka"):
                names = [n for n in wanted if STACKS[n].bus == bus]
                if names or (sse and bus == "nats"):
                    self.run_bus(bus, names, sse and bus == "nats")
        except KeyboardInterrupt:
            interrupted = True
            self._say("interrupted: every process stopped; writing what was measured")
        finally:
            summarise(self.results)
            self.results["interrupted"] = interrupted
            self.results["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            opts.output.parent.mkdir(parents=True, exist_ok=True)
            opts.output.write_text(json.dumps(self.results, indent=2) + "\n")
        return self.results

    def _tool_version(self) -> str:
        if self.opts.load != "wrk" or self.wrk is None:
            return "python (bench.pyload)"
        done = subprocess.run([self.wrk, "-v"], capture_output=True, text=True, check=False)
        first = (done.stdout or done.stderr).splitlines()
        words = first[0].split() if first else []
        return " ".join(words[:2]) if words else "wrk"


# --- aggregation ----------------------------------------------------------------------------


def _aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median req/s and percentiles over rounds, summed errors, peak RSS per process."""
    rss: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for run in runs:
        for name, mb in run["rss_mb"].items():
            rss[name] = max(rss.get(name, 0.0), mb)
        for name, seconds in run["cpu_s"].items():
            cpu[name] = cpu.get(name, 0.0) + seconds
    requests = sum(r["requests"] for r in runs) or 1
    # CPU per request holds up better than req/s when other work shares the machine.
    per_request = {name: round(seconds / requests * 1e6) for name, seconds in cpu.items()}
    return {
        "rps": round(median(r["rps"] for r in runs), 1),
        "p50_ms": round(median(r["p50_ms"] for r in runs), 3),
        "p99_ms": round(median(r["p99_ms"] for r in runs), 3),
        "p999_ms": round(median(r["p999_ms"] for r in runs), 3),
        "requests": sum(r["requests"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "rss_mb": rss,
        "cpu_us_per_request": per_request,
    }


def _pairs(
    mine: dict[str, Any] | None, base: dict[str, Any] | None
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Runs of the same round, busgate's with the floor's."""
    if not mine or not base:
        return []
    rounds = {r["round"]: r for r in base.get("runs", [])}
    return [(r, rounds[r["round"]]) for r in mine.get("runs", []) if r["round"] in rounds]


def summarise(results: dict[str, Any]) -> None:
    """Aggregate the rounds, compute the ratios against each floor, judge the targets."""
    scenarios = results["scenarios"]
    for entry in scenarios.values():
        for mode in ("throughput", "latency"):
            if mode in entry and entry[mode]["runs"]:
                entry[mode].update(_aggregate(entry[mode]["runs"]))
    for entry in scenarios.values():
        floor = scenarios.get(entry.get("floor") or "")
        if not floor:
            continue
        # Each round's pair ran back to back, so a per-round comparison cancels the noise
        # that drifts between rounds; the median then drops a round that a burst hit.
        pairs = _pairs(entry.get("throughput"), floor.get("throughput"))
        if pairs:
            ratios = [m["rps"] / b["rps"] for m, b in pairs if b["rps"]]
            entry["ratios"] = [round(r, 3) for r in ratios]
            entry["ratio"] = round(median(ratios), 3) if ratios else None
            if len(ratios) >= 4:  # how far the rounds spread: the noise the median sits in
                low, _, high = quantiles(ratios, n=4)
                entry["ratio_middle_half"] = [round(low, 3), round(high, 3)]
        # The floor's CPU per request over this scenario's: what the ratio would be if CPU
        # alone bound both. It moves far less than req/s when a neighbour takes the
        # machine's CPU in bursts (a round's req/s then says more about the burst).
        mine = sum(entry.get("throughput", {}).get("cpu_us_per_request", {}).values())
        base = sum(floor.get("throughput", {}).get("cpu_us_per_request", {}).values())
        if mine and base:
            entry["cpu_ratio"] = round(base / mine, 3)
        pairs = _pairs(entry.get("latency"), floor.get("latency"))
        if pairs:
            entry["p99_delta_ms"] = round(median(m["p99_ms"] - b["p99_ms"] for m, b in pairs), 3)
            entry["p50_delta_ms"] = round(median(m["p50_ms"] - b["p50_ms"] for m, b in pairs), 3)
    results["errors"] = sum(
        entry.get(mode, {}).get("errors", 0)
        for entry in scenarios.values()
        for mode in ("throughput", "latency")
    )
    results["targets"] = [
        judge(t.label, t.scenario, t.metric, t.limit, t.at_least, scenarios) for t in TARGETS
    ]


def judge(
    label: str, scenario: str, metric: str, limit: float, at_least: bool, scenarios: dict[str, Any]
) -> dict[str, Any]:
    entry = scenarios.get(scenario, {})
    row: dict[str, Any] = {"target": label, "limit": limit, "value": None}
    status = entry.get("status", "skipped")
    if status != "ok":
        row["status"] = {"pending": "PENDING", "failed": "MISS"}.get(status, "SKIPPED")
        row["note"] = entry.get("reason")
        return row
    value: float | None = None
    errors = 0
    match metric:
        case "ratio" | "p99_delta_ms":
            value = entry.get(metric)
            errors = entry.get("throughput" if metric == "ratio" else "latency", {}).get(
                "errors", 0
            )
        case "p50_ms":
            value = entry.get("latency", {}).get("p50_ms")
            errors = entry.get("latency", {}).get("errors", 0)
        case "idle_rss_mb":
            value = entry.get("idle_rss_mb", {}).get("edge")
        case "sse_rss_mb":
            value = entry.get("streams", {}).get("10000", {}).get("rss_mb")
            errors = entry.get("streams", {}).get("10000", {}).get("failed", 0)
    if value is None:
        row.update(status="SKIPPED", note="not measured in this run (mode or floor not selected)")
        return row
    row["value"] = value
    ok = value >= limit if at_least else value <= limit
    row["status"] = "PASS" if ok and not errors else "MISS"
    notes = [f"{errors} errors"] if errors else []
    if metric == "ratio":
        if spread := entry.get("ratio_middle_half"):
            notes.append(f"rounds' middle half {spread[0]:.3f}-{spread[1]:.3f}")
        if (cpu := entry.get("cpu_ratio")) is not None:
            notes.append(f"by CPU/request x{cpu:.3f}")
    if notes:
        row["note"] = "; ".join(notes)
    return row


def in_turn(names: list[str], round_: int) -> list[str]:
    """The scenarios of one round, in order on odd rounds and reversed on even ones (A B,
    B A): load that drifts within a round (another tenant's burst, a broker growing)
    then favours no scenario. In a fixed order, ``busgate-nats-sampling0`` -- the same code
    path as ``busgate-nats``, run fourth of five -- measured 0.875x of it."""
    return names if round_ % 2 else names[::-1]
