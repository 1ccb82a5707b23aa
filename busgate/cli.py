"""``busgate`` — one command for every process: edge, adapter, runners, dev stack, config."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from busgate.bus import calllog
from busgate.contracts.config import Config, ConfigError, load

DEV_CONFIG = Path(__file__).with_name("dev.toml")


def use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional on some platforms
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _config(path: str | None) -> Config:
    from busgate.bus import parse_url

    try:
        config = load(path)
        try:
            parse_url(config.gateway.bus)
        except ValueError as exc:
            raise ConfigError(f"gateway.bus: {exc}") from None
    except ConfigError as exc:
        print(f"busgate: invalid configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return config


def cmd_edge(args: argparse.Namespace) -> int:
    from busgate.edge.server import run

    use_uvloop()
    try:
        run(_config(args.config), args.config)
    except ConfigError as exc:  # found while building the app: a secret or key not readable
        print(f"busgate: invalid configuration: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_adapter(args: argparse.Namespace) -> int:
    from busgate.adapters.service import run

    use_uvloop()
    try:
        run(_config(args.config), args.system or None, args.metrics_listen, args.config)
    except ValueError as exc:
        print(f"busgate adapter: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_runner(args: argparse.Namespace) -> int:
    use_uvloop()
    if args.kind == "rpc":
        from busgate.runners.rpc import run

        run(args.listen)
    elif args.kind == "auth":
        from busgate.runners.auth import run as run_auth

        run_auth(args.listen, args.db or "busgate-users.db", args.seed)
    elif args.kind == "crud":
        from busgate.runners.crud import run as run_crud

        run_crud(args.listen, args.db or "sqlite:///busgate-data.db")
    elif args.kind == "rsocket":
        from busgate.runners.rsocket import run as run_rsocket

        run_rsocket(args.listen, args.ws_listen)
    elif args.kind == "native":
        from busgate.runners.native import run as run_native

        if args.config:  # the gateway's: its bus, prefix and telemetry (tracing)
            config = _config(args.config)
            bus, prefix = args.bus or config.gateway.bus, args.prefix or config.gateway.prefix
            run_native(args.system, bus, prefix, config.telemetry)
        else:
            run_native(args.system, args.bus, args.prefix)
    return 0


def config_warnings(config: Config) -> list[str]:
    """What is valid but will not work as written (checked without connecting)."""
    from busgate.bus import limits, max_message_of

    warnings = []
    gateway = config.gateway
    carried = max_message_of(gateway.bus)
    if gateway.max_body > (body := limits.body_limit(gateway.max_body, carried)):
        warnings.append(
            f"gateway.max_body ({gateway.max_body} bytes) exceeds what the bus carries: bodies "
            f"over {body} bytes will be refused (413). Raise the bus's limit (NATS server "
            "max_payload with ?max_payload=N on the URL; Kafka ?max_request_size=N and the "
            "brokers' message.max.bytes) or lower max_body."
        )
    return warnings


def cmd_config_check(args: argparse.Namespace) -> int:
    config = _config(args.file)
    for warning in config_warnings(config):
        print(f"busgate: warning: {warning}", file=sys.stderr)
    print(
        f"{args.file}: ok — {len(config.systems)} system(s), {len(config.channels)} channel(s), "
        f"bus {config.gateway.bus}"
    )
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    from busgate.trace import run

    return run(
        args.id,
        bus=args.bus,
        config=args.config,
        prefix=args.prefix,
        follow_calls=args.follow,
        channel=args.channel,
        wait=args.wait,
    )


def cmd_asyncapi(args: argparse.Namespace) -> int:
    from busgate.edge.asyncapi import document_of

    data = document_of(_config(args.config or str(DEV_CONFIG)))
    if args.output in (None, "-"):
        sys.stdout.write(data.decode() + "\n")
    else:
        Path(args.output).write_bytes(data + b"\n")
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from busgate.dev import run

    return run(
        bus=args.bus,
        listen=args.listen,
        config=args.config or str(DEV_CONFIG),
        tls=args.tls,
        log_format=args.log_format,
        log_level=args.log_level,
    )


def cmd_cert_push(args: argparse.Namespace) -> int:
    """Check a certificate and its key, then store them on the bus for every edge."""
    import asyncio

    from busgate import bus as bus_
    from busgate.bus.certificates import push
    from busgate.tls.pem import read

    config = _config(args.config)
    try:
        pair = read(args.cert, args.key)
    except ConfigError as exc:
        print(f"busgate cert push: {exc}", file=sys.stderr)
        return 2

    async def run() -> int:
        bus = bus_.from_url(config.gateway.bus, node="cert-push", prefix=config.gateway.prefix)
        await bus.connect()
        try:
            return await push(bus, args.name, pair.cert_pem, pair.key_pem)
        finally:
            await bus.close()

    revision = asyncio.run(run())
    print(
        f"pushed certificate {args.name!r}: {pair.subject}, until {pair.not_after:%Y-%m-%d}, "
        f"sha256 {pair.fingerprint[:16]}… (revision {revision})"
    )
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="busgate", description=__doc__)
    p.add_argument("--log-level", default="INFO")
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="json: one object per line, with trace_id and request_id",
    )
    sub = p.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="run the embedded default: broker, edge, adapter, runner")
    dev.add_argument("--bus", choices=("nats", "kafka"), default="nats")
    dev.add_argument("--listen", default="127.0.0.1:8080")
    dev.add_argument("--config", help="config file (default: the shipped dev config)")
    dev.add_argument("--tls", action="store_true", help="serve HTTPS (a self-signed certificate)")
    dev.add_argument(  # also taken after ``dev`` (argparse keeps the global one otherwise)
        "--log-format",
        choices=("text", "json"),
        default=argparse.SUPPRESS,
        help="json: one object per line, with trace_id and request_id, from every process",
    )
    dev.set_defaults(func=cmd_dev)

    edge = sub.add_parser("edge", help="run one HTTP edge node")
    edge.add_argument("--config", required=True)
    edge.set_defaults(func=cmd_edge)

    adapter = sub.add_parser("adapter", help="run an adapter for some or all systems")
    adapter.add_argument("--config", required=True)
    adapter.add_argument("--system", action="append", help="serve only this system (repeatable)")
    adapter.add_argument(
        "--metrics-listen", metavar="HOST:PORT", help="serve Prometheus /metrics here"
    )
    adapter.set_defaults(func=cmd_adapter)

    trace = sub.add_parser(
        "trace", help="one call's waterfall from the spans on the bus, or --follow calls live"
    )
    trace.add_argument("id", nargs="?", help="a request id (X-Request-Id) or a trace id")
    trace.add_argument(
        "--follow",
        action="store_true",
        help="print calls as they end, from now on (NATS: a core subscription, so calls "
        "that end while it reconnects are missed; look them up by id)",
    )
    trace.add_argument("--channel", help="--follow: only calls on this channel")
    trace.add_argument("--bus", help="bus URL (default: --config's, or a running busgate dev)")
    trace.add_argument("--config", help="config file naming the bus and prefix")
    trace.add_argument("--prefix", help="bus prefix (default: the config's)")
    trace.add_argument(
        "--wait", type=float, default=3.0, help="seconds to wait for spans still in batches"
    )
    trace.set_defaults(func=cmd_trace)

    runner = sub.add_parser("runner", help="run a shipped sample runner")
    runner.add_argument("kind", choices=("rpc", "auth", "crud", "rsocket", "native"))
    runner.add_argument("--listen", default="127.0.0.1:9001", help="rsocket: its tcp HOST:PORT")
    runner.add_argument("--ws-listen", help="rsocket: also websocket on HOST:PORT, at /rsocket")
    runner.add_argument(
        "--db",
        help="auth: the SQLite user store (busgate-users.db); crud: sqlite:///PATH or"
        " postgresql://USER@HOST:PORT/DB (sqlite:///busgate-data.db)",
    )
    runner.add_argument(
        "--seed",
        action="append",
        metavar="USER=ROLE[,ROLE]",
        help="auth: create or reset a user; password from $BUSGATE_AUTH_SEED_PASSWORD",
    )
    runner.add_argument("--bus", help="native: bus URL (default: $BUSGATE_BUS, local NATS)")
    runner.add_argument("--system", default="native", help="native: the system it serves")
    runner.add_argument("--prefix", help="native: bus prefix (default: busgate)")
    runner.add_argument(
        "--config", help="native: the gateway's config (bus, prefix, [telemetry] for tracing)"
    )
    runner.set_defaults(func=cmd_runner)

    from busgate import publish, tail

    publish.add_parsers(sub)
    tail.add_parser(sub)

    cert = sub.add_parser("cert", help="certificates on the bus")
    cert_sub = cert.add_subparsers(dest="action", required=True)
    push = cert_sub.add_parser("push", help="store a certificate for every edge (source = bus)")
    push.add_argument("cert", help="PEM certificate chain, leaf first")
    push.add_argument("key", help="its PEM private key")
    push.add_argument("--config", required=True, help="config naming the bus and prefix")
    push.add_argument("--name", default="default", help="[gateway.tls] name (default: default)")
    push.set_defaults(func=cmd_cert_push)

    asyncapi = sub.add_parser(
        "asyncapi", help="write the AsyncAPI document of the bus (subjects/topics, messages)"
    )
    asyncapi.add_argument("--config", help="config file (default: the shipped dev config)")
    asyncapi.add_argument("-o", "--output", help="file to write (default: stdout)")
    asyncapi.set_defaults(func=cmd_asyncapi)

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="action", required=True)
    check = config_sub.add_parser("check", help="validate a config file")
    check.add_argument("file")
    check.set_defaults(func=cmd_config_check)
    from busgate.config_cmd import add_parsers

    add_parsers(config_sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    calllog.configure(args.log_level, args.log_format)
    return int(args.func(args) or 0)
