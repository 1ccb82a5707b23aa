"""``busgate command`` and ``busgate send``: the edge's publishes, from the command line.

For operators and scripts. Each builds what ``POST /api/command/...`` and
``POST /api/send/...`` publish -- the same envelope, bus headers and broker acknowledgement
(``bus.commands``, ``bus.producers``) -- and sends it straight to the bus of ``--config``: no
edge in between, and no token checked (whoever holds the config and reaches the bus may
publish). It prints the edge's 202 body as one JSON line (the command id; where the message
landed) and exits 0 only after the broker acknowledged; otherwise a message on stderr and
exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from busgate import bus as bus_
from busgate.bus import headers as hdr
from busgate.bus.commands import accepted, command_request, finds_published
from busgate.bus.commands import publish as publish_command
from busgate.bus.producers import allows, producer_for
from busgate.bus.store import open_store
from busgate.contracts.commands import CommandStatus
from busgate.contracts.config import Config
from busgate.contracts.errors import BusgateError
from busgate.contracts.wire import Request
from busgate.edge.ids import IdFactory

_BAD_SEGMENTS = frozenset({".", ".."})
STATUS_WAIT = 10.0
"""Seconds ``busgate command`` gives the ``accepted`` status write (the command is out)."""


class Refused(Exception):
    """What the command line says before exiting with status 1."""


def read_data(value: str) -> bytes:
    """``--data``: the text itself, ``@FILE`` for a file's bytes, ``@-`` for stdin."""
    if not value.startswith("@"):
        return value.encode()
    name = value[1:]
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except OSError as exc:
        raise Refused(f"cannot read {name}: {exc.strerror or exc}") from None


def cli_node(config: Config) -> str:
    """The bus node name of the command line: one per gateway id, so a Kafka bus reuses one
    reply topic rather than leaving a new one behind for every run."""
    return f"{config.gateway.id}-cli"


async def issue_command(config: Config, path: str, body: bytes) -> dict[str, Any]:
    """Publish a command as ``POST /api/command/{path}`` would; the edge's 202 body."""
    commands = config.commands
    if commands is None:
        raise Refused("the config has no [commands] section")
    path = path.strip("/")
    if not path or not _BAD_SEGMENTS.isdisjoint(path.split("/")):
        raise Refused("PATH must be a non-empty path without '.' or '..' segments")
    try:
        json.loads(body)
    except ValueError:
        raise Refused("--data must be JSON (a command's payload)") from None
    traceparent, _ = IdFactory("cli").traceparent()
    command = command_request(commands.system, path, body, traceparent=traceparent)
    bus = bus_.from_url(config.gateway.bus, node=cli_node(config), prefix=config.gateway.prefix)
    await bus.connect()
    try:
        await publish_command(bus, command)
        if not finds_published(bus):  # NATS: the stream's copy is its ``accepted`` (the edge's)
            try:
                async with asyncio.timeout(STATUS_WAIT):
                    await _record_accepted(bus, command, commands.retention)
            except (BusgateError, TimeoutError) as exc:  # published all the same, as at the edge
                print(f"busgate command: its status not stored: {exc!r}", file=sys.stderr)
    finally:
        await bus.close()
    return {"commandId": command.id, "status": "accepted"}


async def _record_accepted(bus: bus_.Bus, command: Request, retention: float) -> None:
    status = open_store(bus, "commands", CommandStatus, max_age=retention)
    try:
        await status.start()
        await status.create(command.id, accepted(command), ttl=retention)
    finally:
        await status.close()


def quiet_clients() -> None:
    """The command line reports the outcome itself; the clients' chatter while they retry
    (a line per failed connect, several a second) stays out unless ``--log-level DEBUG``."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in ("nats", "aiokafka", "busgate.bus"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


async def send_message(
    config: Config,
    name: str,
    topic: str,
    key: str,
    body: bytes,
    *,
    mod: int | None = None,
    content_type: str | None = None,
) -> dict[str, Any]:
    """Publish as ``POST /api/send/{name}/{topic}/{key}`` (``…/mod/{mod}/{key}``) would;
    where the message landed."""
    service = config.senders.get(name)
    if service is None:
        known = ", ".join(sorted(config.senders)) or "none"
        raise Refused(f"unknown service {name!r} (the config has: {known})")
    if not allows(service, topic):
        raise Refused(f"service {name!r} may not send to topic {topic!r} ({service.topics})")
    partition = None
    if mod is not None:
        try:
            number = int(key)
        except ValueError:
            raise Refused("with --mod, KEY must be an integer") from None
        if mod <= 0:
            raise Refused("--mod must be a positive integer")
        partition = number % mod
    limit = service.max_body or config.gateway.max_body
    if len(body) > limit:
        raise Refused(f"message of {len(body)} bytes exceeds {limit}")
    ids = IdFactory("cli")
    traceparent, _ = ids.traceparent()
    headers = {hdr.REQUEST_ID: ids.request_id(), hdr.TRACEPARENT: traceparent}
    if content_type:
        headers["content-type"] = content_type
    producer = producer_for(service, config.gateway.bus)
    await producer.start()
    try:
        return await producer.send(topic, key, partition, body, headers)
    finally:
        await producer.close()


def _run(what: str, work: Any, timeout: float) -> int:
    """Run ``work`` (a coroutine) bounded by ``timeout``; print its JSON or why it failed."""

    async def bounded() -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            result: dict[str, Any] = await work
            return result

    try:
        result = asyncio.run(bounded())
    except Refused as exc:
        print(f"busgate {what}: {exc}", file=sys.stderr)
        return 1
    except BusgateError as exc:
        print(f"busgate {what}: not published: {exc}", file=sys.stderr)
        return 1
    except TimeoutError:
        print(
            f"busgate {what}: not published: no answer from the bus in {timeout:g} s",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(result), flush=True)
    return 0


def cmd_command(args: argparse.Namespace) -> int:
    from busgate.cli import _config

    config = _config(args.config)
    quiet_clients()
    try:
        body = read_data(args.data)
    except Refused as exc:
        print(f"busgate command: {exc}", file=sys.stderr)
        return 1
    return _run("command", issue_command(config, args.path, body), args.timeout)


def cmd_send(args: argparse.Namespace) -> int:
    from busgate.cli import _config

    config = _config(args.config)
    quiet_clients()
    try:
        body = read_data(args.data)
    except Refused as exc:
        print(f"busgate send: {exc}", file=sys.stderr)
        return 1
    content_type = args.content_type
    if content_type is None:
        try:
            json.loads(body)
            content_type = "application/json"
        except ValueError:
            content_type = "application/octet-stream"
    work = send_message(
        config,
        args.service,
        args.topic,
        args.key,
        body,
        mod=args.mod,
        content_type=content_type or None,
    )
    return _run("send", work, args.timeout)


def add_parsers(sub: Any) -> None:
    """``command`` and ``send`` on the ``busgate`` command line."""
    command = sub.add_parser("command", help="publish a command to the bus (as /api/command)")
    command.add_argument("path", metavar="PATH", help="the command path, e.g. orders/create")
    command.add_argument("--data", required=True, help="the JSON payload, or @FILE, or @-")
    command.add_argument("--config", required=True)
    command.add_argument("--timeout", type=float, default=15.0, help="seconds (default 15)")
    command.set_defaults(func=cmd_command)

    send = sub.add_parser("send", help="publish a message to a service topic (as /api/send)")
    send.add_argument("service", metavar="SERVICE", help="a [services.NAME] of the config")
    send.add_argument("topic", metavar="TOPIC")
    send.add_argument("key", metavar="KEY")
    send.add_argument("--data", required=True, help="the message, or @FILE, or @-")
    send.add_argument("--mod", type=int, help="partition = integer KEY mod MOD")
    send.add_argument(
        "--content-type",
        help="message header (default: application/json if the data is JSON, else "
        "application/octet-stream; '' for none)",
    )
    send.add_argument("--config", required=True)
    send.add_argument("--timeout", type=float, default=15.0, help="seconds (default 15)")
    send.set_defaults(func=cmd_send)
