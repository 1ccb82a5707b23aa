"""The scenarios, as data: for each, the processes to start (argv + readiness check), the
URL and headers to load, and the floor it is compared with.

A scenario that cannot run yet in this tree (the busgate CLI is missing, the config does not
accept tokens, the edge has no ``/api/stream``) builds a :class:`Pending` with the reason,
which the report prints instead of a number: nothing is faked.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import hmac
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.load import BODY
from bench.procs import HOST, ROOT, ProcSpec, Ready
from busgate.brokers import free_port

ECHO = "/api/request/demo/echo"
COMMAND = "/api/command/orders/create"
FLOOR_ECHO = ECHO  # the floor edge forwards any path; the same one keeps logs comparable
STREAM = "/api/stream/demo/count"
STREAM_BODY = b'{"from":1,"to":2,"batch":1,"wait":3600000}'
"""One event at once, then an hour's wait: the stream stays open and idle."""

SECURE_SECRET = secrets.token_hex(32)
SECURE_TOKEN = "bench"
SECURE_CHANNEL = f'auth = "{SECURE_TOKEN}"'
"""Keys added to ``[channels.demo]``: every path of the channel needs a valid token."""
SECURE_TABLES = f"""
[tokens.{SECURE_TOKEN}]
algorithm = "HS512"
secret = "{SECURE_SECRET}"
issuer = "busgate-bench"
audience = "busgate-bench"
"""
"""Tables added for ``busgate-nats-secure``. While ``busgate config check`` refuses them, or
the edge still answers a call without the token, the scenario is reported as pending."""


@dataclass
class Env:
    """What the scenarios are built from: interpreters and commands found in this tree."""

    python: str
    busgate: list[str] | None
    """argv prefix of the busgate CLI, or None while it is not in the tree."""
    busgate_runner: bool
    """``busgate runner rpc`` exists (else the stand-in runner serves both sides)."""
    workdir: Path

    def runner(self, port: int) -> ProcSpec:
        listen = f"{HOST}:{port}"
        if self.busgate is not None and self.busgate_runner:
            argv = [*self.busgate, "runner", "rpc", "--listen", listen]
        else:
            argv = [self.python, "-m", "bench.floor.runner", "--listen", listen]
        return ProcSpec("runner", argv, Ready(port=port))

    @property
    def runner_name(self) -> str:
        if self.busgate is not None and self.busgate_runner:
            return "busgate runner rpc"
        return "bench.floor.runner (stand-in: busgate runner rpc not in this tree)"


def echoed(status: int, body: bytes) -> bool:
    """A request scenario's right answer: 200 with the body sent, as the runner echoes it."""
    try:
        return status == 200 and bool(json.loads(body) == json.loads(BODY))
    except ValueError:
        return False


def shaped(status: int, body: bytes) -> bool:
    """``busgate-nats-shaped``'s right answer: 200 with the alias's mappings applied (the
    path parameter and the tenant header merged into the echoed body)."""
    try:
        return status == 200 and bool(
            json.loads(body) == {"hello": "world", "id": "42", "tenant": "bench"}
        )
    except ValueError:
        return False


def accepted(status: int, body: bytes) -> bool:
    """A command scenario's right answer: 202 with a JSON object (after the broker's ack)."""
    try:
        return status == 202 and isinstance(json.loads(body), dict)
    except ValueError:
        return False


@dataclass
class Stack:
    """One system under test, ready to start."""

    name: str
    bus: str
    processes: list[ProcSpec]
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    floor: str | None = None
    check_rejects: bool = False
    """Also check that a request without ``headers`` is refused (auth really enforced)."""
    edge_port: int = 0
    expect: Callable[[int, bytes], bool] = echoed
    """Whether an answer is right (the probe waits for one, end to end)."""


@dataclass
class Pending:
    """A scenario this tree cannot run yet, and why."""

    reason: str


Builder = Callable[[Env, str], "Stack | Pending"]


@dataclass(frozen=True)
class Scenario:
    name: str
    bus: str
    build: Builder
    floor: str | None = None


def _cli(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    assert env.busgate is not None
    return subprocess.run(
        [*env.busgate, *args], capture_output=True, text=True, timeout=30, cwd=ROOT, check=False
    )


def find_busgate(python: str = sys.executable) -> list[str] | None:
    """The busgate CLI as an argv prefix: ``python -m busgate`` when the tree has it."""
    if (ROOT / "busgate" / "__main__.py").exists() and (ROOT / "busgate" / "cli.py").exists():
        return [python, "-m", "busgate"]
    script = Path(python).with_name("busgate")
    return [str(script)] if script.exists() else None


def has_command(busgate: list[str] | None, *words: str) -> bool:
    """Whether ``busgate WORDS --help`` works, i.e. the subcommand exists."""
    if busgate is None:
        return False
    try:
        done = subprocess.run(
            [*busgate, *words, "--help"], capture_output=True, timeout=30, cwd=ROOT, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _importable(env: Env, statement: str) -> bool:
    """Whether the tree (as the processes will see it) can run ``statement``."""
    done = subprocess.run(
        [env.python, "-c", statement], capture_output=True, cwd=ROOT, timeout=30, check=False
    )
    return done.returncode == 0


def floor(env: Env, bus_url: str) -> Stack:
    runner, edge = free_port(), free_port()
    py = env.python
    kind = bus_url.partition("://")[0]
    return Stack(
        name=f"floor-{kind}",
        bus=kind,
        processes=[
            env.runner(runner),
            ProcSpec(
                "responder",
                [
                    *(py, "-m", "bench.floor.responder", "--bus", bus_url),
                    *("--runner", f"http://{HOST}:{runner}/api/demo/echo"),
                ],
            ),
            ProcSpec(
                "edge",
                [py, "-m", "bench.floor.edge", "--bus", bus_url, "--listen", f"{HOST}:{edge}"],
                Ready(http=f"http://{HOST}:{edge}/readyz"),
            ),
        ],
        url=f"http://{HOST}:{edge}{FLOOR_ECHO}",
        edge_port=edge,
    )


def floor_command(env: Env, bus_url: str) -> Stack:
    """An aiohttp handler doing one acked JetStream publish (``bench.floor.command``)."""
    edge = free_port()
    argv = [env.python, "-m", "bench.floor.command", "--bus", bus_url, "--listen", f"{HOST}:{edge}"]
    return Stack(
        name="floor-nats-command",
        bus="nats",
        processes=[ProcSpec("edge", argv, Ready(http=f"http://{HOST}:{edge}/readyz"))],
        url=f"http://{HOST}:{edge}{COMMAND}",
        edge_port=edge,
        expect=accepted,
    )


def busgate_command(env: Env, bus_url: str, name: str = "busgate-nats-command") -> Stack | Pending:
    """``POST /api/command/orders/create`` through ``busgate edge``: 202 once JetStream has
    the command. Only the edge runs (no adapter consumes), as no consumer runs beside the
    floor: both measure the acked publish, and the stream keeps what they published."""
    if env.busgate is None or not has_command(env.busgate, "edge"):
        return Pending("busgate CLI (busgate edge) is not in this tree yet")
    edge = free_port()
    config = env.workdir / f"{name}.toml"
    dead = free_port()  # the runner: never called, nothing consumes the commands
    text = busgate_config(name, bus_url, f"{HOST}:{edge}", dead)
    config.write_text(text + '\n[commands]\nsystem = "demo"\n')
    check = _cli(env, "config", "check", str(config))
    if check.returncode != 0:
        why = (check.stderr or check.stdout).strip().splitlines()
        return Pending(f"busgate rejects [commands]: {why[-1] if why else check.returncode}")
    return Stack(
        name=name,
        bus="nats",
        processes=[
            ProcSpec(
                "edge",
                [*env.busgate, "edge", "--config", str(config)],
                Ready(http=f"http://{HOST}:{edge}/readyz"),
            ),
        ],
        url=f"http://{HOST}:{edge}{COMMAND}",
        edge_port=edge,
        expect=accepted,
    )


def busgate_config(
    name: str, bus_url: str, listen: str, runner: int, channel: str = "", tables: str = ""
) -> str:
    """The issue's config; a prefix and id per stack keep stacks on one broker apart."""
    return f"""[gateway]
id = "{name}"
prefix = "{name}"
bus = "{bus_url}"
listen = "{listen}"
max_streams = 20000
max_streams_per_client = 20000

[systems.demo]
type = "rpc"
base_url = "http://{HOST}:{runner}/api/demo"
timeout = 5.0

[channels.demo]
system = "demo"
{channel}
{tables}"""


def hs512_token(secret: str, subject: str = "bench", ttl: int = 3600) -> str:
    """A signed JWT for the secure scenario (stdlib only: the bench adds no dependency)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    now = int(time.time())
    header = b64(json.dumps({"alg": "HS512", "typ": "JWT", "kid": SECURE_TOKEN}).encode())
    claims = {
        "sub": subject,
        "iss": "busgate-bench",
        "aud": "busgate-bench",
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "typ": "access",
    }
    payload = b64(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha512)
    return f"{header}.{payload}.{b64(signature.digest())}"


TRACED_TABLES = """
[telemetry]
sampling = 1.0
bus_export = true
"""
"""``busgate-nats-traced``: every call traced, its spans exported onto the bus."""
METRICS_TABLES = """
[telemetry]
sampling = 0.0
metrics = true
"""
"""``busgate-nats-metrics``: tracing off (0 % sampling), Prometheus metrics on."""
SHAPED_TABLES = """
[channels.demo.aliases."v1/echo/{id}"]
target = "echo"
payload.tenant = "headers.X-Tenant"
meta.agent = "headers.User-Agent"

[channels.demo.response_headers]
Cache-Control = "no-store"
X-Content-Type-Options = "nosniff"

[channels.demo.paths."v1/*"]
audit = true
response_headers = { POST = { Cache-Control = "private, max-age=0" } }
"""
"""``busgate-nats-shaped``: the load calls an alias (a path parameter and two header
mappings), answers get response headers by specificity, and every call is audited."""
SHAPED_PATH = "/api/request/demo/v1/echo/42"


RESILIENT_TABLES = """
[channels.demo.resilience]
rate = { limit = 100000000, period = 1 }
ip = { limit = 100000000, period = 1 }
bulkhead = { max_concurrent = 100000, max_wait = 0.05 }
breaker = { size = 50, failure_rate = 50, min_calls = 20, slow_call = 2.0, open_wait = 30 }
retry = { attempts = 3, wait = 0.1, backoff = 2.0, on_status = [502, 503, 504] }
"""
"""``busgate-nats-resilient``: rate limits high enough never to bite, bulkhead, breaker and
retries all configured on the channel (issue 11: at >= 0.95 x ``busgate-nats``)."""


SAMPLING0_TABLES = """
[telemetry]
sampling = 0.0
bus_export = true
otlp_endpoint = "http://127.0.0.1:9/v1/traces"
"""
"""``busgate-nats-sampling0``: tracing configured (bus and OTLP export) but sampling 0."""


def busgate(
    env: Env,
    bus_url: str,
    *,
    name: str,
    secure: bool = False,
    tables: str = "",
    path: str = ECHO,
    extra_headers: tuple[tuple[str, str], ...] = (),
    expect: Callable[[int, bytes], bool] = echoed,
) -> Stack | Pending:
    if env.busgate is None or not has_command(env.busgate, "edge"):
        return Pending("busgate CLI (busgate edge/adapter) is not in this tree yet")
    kind = bus_url.partition("://")[0]
    if kind == "kafka" and not _importable(env, "from busgate.bus.kafka import KafkaBus"):
        return Pending(
            "busgate has no Kafka transport in this tree yet (busgate.bus.kafka.KafkaBus)"
        )
    runner, edge = free_port(), free_port()
    config = env.workdir / f"{name}.toml"
    listen = f"{HOST}:{edge}"
    if secure:
        text = busgate_config(name, bus_url, listen, runner, SECURE_CHANNEL, SECURE_TABLES)
    else:
        text = busgate_config(name, bus_url, listen, runner, tables=tables)
    config.write_text(text)
    if has_command(env.busgate, "config", "check"):
        check = _cli(env, "config", "check", str(config))
        if check.returncode != 0:
            why = (check.stderr or check.stdout).strip().splitlines()
            detail = why[-1] if why else f"exit {check.returncode}"
            if secure:
                return Pending(f"config does not take bearer tokens yet: {detail}")
            if tables:
                return Pending(f"config does not take [telemetry] yet: {detail}")
            return Pending(f"busgate rejects the bench config: {detail}")
    headers = {"Authorization": f"Bearer {hs512_token(SECURE_SECRET)}"} if secure else {}
    headers.update(extra_headers)
    cfg = str(config)
    return Stack(
        name=name,
        bus=kind,
        processes=[
            env.runner(runner),
            ProcSpec("adapter", [*env.busgate, "adapter", "--config", cfg], Ready(settle=0.5)),
            ProcSpec(
                "edge",
                [*env.busgate, "edge", "--config", cfg],
                Ready(http=f"http://{HOST}:{edge}/readyz"),
            ),
        ],
        url=f"http://{HOST}:{edge}{path}",
        headers=headers,
        check_rejects=secure,
        edge_port=edge,
        expect=expect,
    )


NATIVE_CONFIG = """[gateway]
id = "{name}"
prefix = "{name}"
bus = "{bus_url}"
listen = "{listen}"

[systems.demo]
type = "bus"
timeout = 5.0

[channels.demo]
system = "demo"
"""
"""``busgate-nats-native``: system ``demo`` is bus-native, served by ``busgate runner native``
(the FastStream runner kit, its ``echo`` saga) with no adapter: one hop fewer."""


def busgate_native(env: Env, bus_url: str, *, name: str) -> Stack | Pending:
    if env.busgate is None or not has_command(env.busgate, "runner", "native"):
        return Pending("busgate runner native (the bus-native runner kit) is not in this tree yet")
    edge = free_port()
    config = env.workdir / f"{name}.toml"
    listen = f"{HOST}:{edge}"
    config.write_text(NATIVE_CONFIG.format(name=name, bus_url=bus_url, listen=listen))
    runner = [*env.busgate, "runner", "native", "--bus", bus_url, "--system", "demo"]
    return Stack(
        name=name,
        bus=bus_url.partition("://")[0],
        processes=[
            ProcSpec("runner", [*runner, "--prefix", name], Ready(settle=1.0)),
            ProcSpec(
                "edge",
                [*env.busgate, "edge", "--config", str(config)],
                Ready(http=f"http://{HOST}:{edge}/readyz"),
            ),
        ],
        url=f"http://{HOST}:{edge}{ECHO}",
        edge_port=edge,
    )


def _busgate(name: str, secure: bool = False, tables: str = "", **more: Any) -> Builder:
    return functools.partial(busgate, name=name, secure=secure, tables=tables, **more)


def https_files(env: Env) -> tuple[str, str]:
    """A self-signed certificate for the HTTPS scenarios (both sides serve the same one)."""
    cert, key = env.workdir / "https-cert.pem", env.workdir / "https-key.pem"
    if not cert.exists():
        from busgate.tls.self_signed import generate

        pair = generate((HOST,), 86_400.0)
        cert.write_bytes(pair.cert_pem)
        key.write_bytes(pair.key_pem)
    return str(cert), str(key)


def to_https(stack: Stack) -> Stack:
    def https(url: str) -> str:
        return url.replace("http://", "https://", 1)

    stack.url = https(stack.url)
    stack.processes = [
        dataclasses.replace(spec, ready=Ready(http=https(spec.ready.http)))
        if spec.ready.http
        else spec
        for spec in stack.processes
    ]
    return stack


def floor_https(env: Env, bus_url: str) -> Stack:
    """The floor edge serving HTTPS: what busgate's ``[gateway.tls]`` is measured against."""
    cert, key = https_files(env)
    stack = floor(env, bus_url)
    stack.name = f"{stack.name}-https"
    edge = next(spec for spec in stack.processes if spec.name == "edge")
    edge.argv.extend(["--tls-cert", cert, "--tls-key", key])
    return to_https(stack)


def busgate_https(env: Env, bus_url: str) -> Stack | Pending:
    cert, key = https_files(env)
    tables = f'[gateway.tls]\ncert = "{cert}"\nkey = "{key}"\n'
    stack = busgate(env, bus_url, name="busgate-nats-https", tables=tables)
    return stack if isinstance(stack, Pending) else to_https(stack)


def busgate_rsocket(env: Env, bus_url: str) -> Stack | Pending:
    """``busgate-rsocket``: the same echo, with the demo system an RSocket one (tcp) served
    by ``busgate runner rsocket``: edge → bus → adapter → RSocket runner."""
    if env.busgate is None or not has_command(env.busgate, "edge"):
        return Pending("busgate CLI (busgate edge/adapter) is not in this tree yet")
    if not _importable(env, "import busgate.runners.rsocket"):
        return Pending("busgate has no RSocket runner in this tree yet")
    name = "busgate-rsocket"
    runner, edge = free_port(), free_port()
    text = busgate_config(name, bus_url, f"{HOST}:{edge}", runner)
    text = text.replace(
        f'type = "rpc"\nbase_url = "http://{HOST}:{runner}/api/demo"',
        f'type = "rsocket"\nhosts = ["{HOST}:{runner}"]',
    )
    config = env.workdir / f"{name}.toml"
    config.write_text(text)
    cfg = str(config)
    return Stack(
        name=name,
        bus=bus_url.partition("://")[0],
        processes=[
            ProcSpec(
                "runner",
                [*env.busgate, "runner", "rsocket", "--listen", f"{HOST}:{runner}"],
                Ready(port=runner),
            ),
            ProcSpec("adapter", [*env.busgate, "adapter", "--config", cfg], Ready(settle=0.5)),
            ProcSpec(
                "edge",
                [*env.busgate, "edge", "--config", cfg],
                Ready(http=f"http://{HOST}:{edge}/readyz"),
            ),
        ],
        url=f"http://{HOST}:{edge}{ECHO}",
        edge_port=edge,
    )


BASELINE = os.environ.get("BENCH_BASELINE", "")
"""Another tree's ``busgate`` console script (e.g. ``/work/old/.venv/bin/busgate``, an
editable install): adds ``baseline-busgate-nats``, ``baseline-busgate-nats-traced`` and
``baseline-busgate-nats-command``, the same scenarios run by that tree, against the same
floors in the same run -- an A/B of a change under the noise of a shared machine. Its
console script, not ``python -m busgate`` (the processes start in this tree, whose
``busgate/`` would shadow the other's), with
``PYTHONPATH`` set to that tree (``BENCH_BASELINE_ROOT``, by default two levels above the
script: ``.venv/bin/..``), not this one's as for every other process."""
BASELINE_ROOT = os.environ.get("BENCH_BASELINE_ROOT", "") or (
    str(Path(BASELINE).absolute().parents[2]) if BASELINE else ""
)


def baseline(build: Builder) -> Builder:
    """``build`` with the baseline tree's CLI and modules (``build`` names the stack its own
    way, so the two stacks' prefixes keep them apart on the broker)."""

    def built(env: Env, bus_url: str) -> Stack | Pending:
        stack = build(dataclasses.replace(env, busgate=[BASELINE]), bus_url)
        if isinstance(stack, Stack):
            stack.processes = [
                dataclasses.replace(spec, env={**spec.env, "PYTHONPATH": BASELINE_ROOT})
                for spec in stack.processes
            ]
        return stack

    return built


# The telemetry scenarios' ratio is to ``busgate-nats``, not to the floor: what they measure
# is what telemetry costs the same gateway (issue 10: traced ≥ 0.9x, 0 % sampling ≥ 0.98x).
STACKS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("floor-nats", "nats", floor),
        Scenario("busgate-nats", "nats", _busgate("busgate-nats"), floor="floor-nats"),
        Scenario(
            "busgate-nats-secure",
            "nats",
            _busgate("busgate-nats-secure", secure=True),
            floor="floor-nats",
        ),
        Scenario(
            "busgate-nats-traced",
            "nats",
            _busgate("busgate-nats-traced", tables=TRACED_TABLES),
            floor="busgate-nats",
        ),
        Scenario(
            "busgate-nats-metrics",
            "nats",
            _busgate("busgate-nats-metrics", tables=METRICS_TABLES),
            floor="busgate-nats",
        ),
        Scenario(
            "busgate-nats-sampling0",
            "nats",
            _busgate("busgate-nats-sampling0", tables=SAMPLING0_TABLES),
            floor="busgate-nats",
        ),
        Scenario("floor-nats-command", "nats", floor_command),
        Scenario("busgate-nats-command", "nats", busgate_command, floor="floor-nats-command"),
        Scenario("floor-nats-https", "nats", floor_https),
        Scenario("busgate-nats-https", "nats", busgate_https, floor="floor-nats-https"),
        Scenario(
            "busgate-nats-resilient",
            "nats",
            _busgate("busgate-nats-resilient", tables=RESILIENT_TABLES),
            floor="busgate-nats",
        ),
        Scenario(
            "busgate-nats-native",
            "nats",
            functools.partial(busgate_native, name="busgate-nats-native"),
            floor="busgate-nats",
        ),
        Scenario(
            "busgate-nats-shaped",
            "nats",
            _busgate(
                "busgate-nats-shaped",
                tables=SHAPED_TABLES,
                path=SHAPED_PATH,
                extra_headers=(("X-Tenant", "bench"),),
                expect=shaped,
            ),
            floor="busgate-nats",
        ),
        Scenario("floor-kafka", "kafka", floor),
        Scenario("busgate-kafka", "kafka", _busgate("busgate-kafka"), floor="floor-kafka"),
        Scenario("busgate-rsocket", "nats", busgate_rsocket, floor="floor-nats"),
        *(
            (
                Scenario(
                    "baseline-busgate-nats",
                    "nats",
                    baseline(_busgate("baseline-busgate-nats")),
                    floor="floor-nats",
                ),
                Scenario(
                    "baseline-busgate-nats-traced",
                    "nats",
                    baseline(_busgate("baseline-busgate-nats-traced", tables=TRACED_TABLES)),
                    floor="busgate-nats",
                ),
                Scenario(
                    "baseline-busgate-nats-command",
                    "nats",
                    baseline(
                        functools.partial(busgate_command, name="baseline-busgate-nats-command")
                    ),
                    floor="floor-nats-command",
                ),
            )
            if BASELINE
            else ()
        ),
    )
}
"""Scenarios that run under load; ``latency`` and ``sse-idle`` are measured on them."""

MODES = ("latency", "sse-idle")
ALL = (*STACKS, *MODES)


@dataclass(frozen=True)
class Target:
    """One goal from the issue, printed as PASS/MISS next to the numbers."""

    label: str
    scenario: str
    metric: str
    """``ratio`` (throughput / floor's), ``p99_delta_ms``, ``p50_ms``, ``idle_rss_mb``,
    ``sse_rss_mb``."""
    limit: float
    at_least: bool = False


TARGETS = (
    Target("busgate-nats ≥ 0.9 x floor-nats req/s", "busgate-nats", "ratio", 0.9, True),
    Target("busgate-nats p99 @1 in flight ≤ floor + 1 ms", "busgate-nats", "p99_delta_ms", 1.0),
    Target(
        "busgate-nats-secure ≥ 0.8 x floor-nats req/s", "busgate-nats-secure", "ratio", 0.8, True
    ),
    Target(
        "busgate-nats-traced ≥ 0.9 x busgate-nats req/s", "busgate-nats-traced", "ratio", 0.9, True
    ),
    Target(
        "busgate-nats-sampling0 ≥ 0.98 x busgate-nats req/s",
        "busgate-nats-sampling0",
        "ratio",
        0.98,
        True,
    ),
    Target(
        "busgate-nats-command ≥ 0.9 x floor-nats-command req/s",
        "busgate-nats-command",
        "ratio",
        0.9,
        True,
    ),
    Target(
        "busgate-nats-shaped ≥ 0.9 x busgate-nats req/s",
        "busgate-nats-shaped",
        "ratio",
        0.9,
        True,
    ),
    Target("busgate-kafka ≥ 0.9 x floor-kafka req/s", "busgate-kafka", "ratio", 0.9, True),
    Target(
        "busgate-nats-https ≥ 0.9 x floor-nats-https req/s",
        "busgate-nats-https",
        "ratio",
        0.9,
        True,
    ),
    Target("busgate-kafka p50 @1 in flight ≤ 6 ms", "busgate-kafka", "p50_ms", 6.0),
    Target("idle busgate-nats edge ≤ 80 MB RSS", "busgate-nats", "idle_rss_mb", 80.0),
    Target("idle busgate-kafka edge ≤ 80 MB RSS", "busgate-kafka", "idle_rss_mb", 80.0),
    Target("10,000 idle SSE streams ≤ 400 MB edge RSS", "sse-idle", "sse_rss_mb", 400.0),
)
