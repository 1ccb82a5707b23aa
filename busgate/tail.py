"""``busgate tail commands|audit|track|TOPIC``: print the messages of a topic as they arrive.

``commands`` follows the command subjects (NATS ``PREFIX.cmd.>``, dead letters included) or
topics (Kafka ``PREFIX.cmd`` and ``PREFIX.cmd.dead``); ``audit`` the audit events of every
channel (NATS ``PREFIX.audit.>``, Kafka ``PREFIX.audit``); ``track`` the tracking events
``/api/track`` publishes, with the sender's identity and session (NATS ``PREFIX.track.>``,
Kafka ``PREFIX.track``: ``edge.track``); anything else is a subject (NATS
wildcards work) or topic on the gateway's bus, or on a service's broker with ``--service``.
It starts at the end: only what is published after it started. One JSON line per message on
stdout -- where it was (``subject``, or ``topic``/``partition``/``offset``), its key and
headers, and the message: a busgate envelope decoded (its body shown as JSON when it is
JSON), else the data as JSON, text or ``{"base64": …}``. A line on stderr says when it
follows. Ctrl-C (or SIGTERM) stops it with exit status 0.

On Kafka it reads without a consumer group, so it takes nothing from anybody; a topic that
does not exist yet is looked for every half second, and read from its beginning once it is
there (everything in it is new).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import signal
import sys
from collections.abc import Callable
from typing import Any

import msgspec

from busgate.bus import kafka_client_of, parse_url
from busgate.contracts.codec import decode
from busgate.contracts.config import Config
from busgate.publish import quiet_clients

Print = Callable[[dict[str, Any]], None]


def render_bytes(data: bytes) -> Any:
    """Bytes for people: JSON if they are JSON, else text, else base64."""
    try:
        return json.loads(data)
    except ValueError:
        pass
    try:
        return data.decode()
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode()}


def _readable(value: Any) -> Any:
    if isinstance(value, bytes):
        return render_bytes(value)
    if isinstance(value, dict):
        return {k: _readable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_readable(v) for v in value]
    return value


def render(data: bytes) -> dict[str, Any]:
    """``{"message": envelope}`` for busgate's own messages, else ``{"data": …}``."""
    try:
        message = decode(data)
    except msgspec.DecodeError:
        return {"data": render_bytes(data)}
    fields = msgspec.to_builtins(message, builtin_types=(bytes,))
    return {"message": {"type": type(message).__name__, **_readable(fields)}}


def print_line(line: dict[str, Any]) -> None:
    print(json.dumps(line, ensure_ascii=False), flush=True)


def _broker(config: Config, service: str | None) -> tuple[str, str]:
    """(kind, url) of the gateway's bus or of a service's broker."""
    if service is None:
        return parse_url(config.gateway.bus)[0], config.gateway.bus
    found = config.senders.get(service)
    if found is None:
        raise LookupError(f"unknown service {service!r}")
    url = found.url or config.gateway.bus
    kind = found.type or ("kafka" if url.lower().startswith("kafka") else "nats")
    return kind, url


async def tail_nats(url: str, subjects: list[str], stop: asyncio.Event, out: Print) -> None:
    from nats.aio.msg import Msg

    from busgate.bus.nats.transport import connect

    async def on_msg(msg: Msg) -> None:
        line: dict[str, Any] = {"subject": msg.subject}
        if msg.headers:
            line["headers"] = dict(msg.headers)
        out({**line, **render(msg.data)})

    # Bounded: with endless reconnects, nats-py also retries a first connect for ever.
    nc = await asyncio.wait_for(connect(url, connect_timeout=2, max_reconnect_attempts=-1), 10)
    try:
        for subject in subjects:
            await nc.subscribe(subject, cb=on_msg)
        await nc.flush()  # the server has the subscriptions: what comes now is printed
        _following(subjects, url)
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.drain(), 5)
        if not nc.is_closed:
            await nc.close()


async def tail_kafka(url: str, topics: list[str], stop: asyncio.Event, out: Print) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    from busgate.bus.kafka.internals import stop_consumer

    client = kafka_client_of(url)
    admin = AIOKafkaAdminClient(**client, client_id="busgate-tail")
    consumer = AIOKafkaConsumer(
        **client,
        client_id="busgate-tail",
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
    )
    await admin.start()
    try:
        await consumer.start()
        assigned: set[TopicPartition] = set()

        async def take(wanted: list[str], *, at_end: bool) -> list[str]:
            """Assign the partitions of those of ``wanted`` that exist; the others."""
            existing = await consumer.topics()  # all topics: asking creates none
            present = [t for t in wanted if t in existing]
            if not present:
                return wanted
            new = [
                TopicPartition(found["topic"], p["partition"])
                for found in await admin.describe_topics(present)
                if found["error_code"] == 0
                for p in found["partitions"]
            ]
            assigned.update(new)
            consumer.assign(list(assigned))
            if at_end:
                await consumer.seek_to_end(*new)
            else:
                await consumer.seek_to_beginning(*new)
            for tp in new:  # resolve the positions now, not at the first fetch
                await consumer.position(tp)
            return [t for t in wanted if t not in {tp.topic for tp in new}]

        missing = await take(topics, at_end=True)
        _following(topics, url, missing)
        while not stop.is_set():
            if missing:
                missing = await take(missing, at_end=False)
            if not assigned:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
                continue
            batches = await consumer.getmany(timeout_ms=500 if not missing else 200)
            for tp, records in batches.items():
                for record in records:
                    line: dict[str, Any] = {
                        "topic": tp.topic,
                        "partition": tp.partition,
                        "offset": record.offset,
                    }
                    if record.key is not None:
                        line["key"] = render_bytes(record.key)
                    if record.headers:
                        line["headers"] = {k: v.decode(errors="replace") for k, v in record.headers}
                    out({**line, **render(record.value or b"")})
    finally:
        await stop_consumer(consumer, 5)
        await admin.close()


def _following(names: list[str], url: str, missing: list[str] | None = None) -> None:
    note = f" (waiting for {', '.join(missing)} to appear)" if missing else ""
    print(
        f"busgate tail: following {', '.join(names)} on {url}{note} (Ctrl-C stops)",
        file=sys.stderr,
        flush=True,
    )


def followed(kind: str, prefix: str, what: str, service: str | None = None) -> list[str]:
    """The subjects (NATS) or topics (Kafka) ``what`` names: ``commands`` and ``audit`` are
    busgate's own on the gateway's bus; anything else (or anything on a service's broker)
    is taken as it is."""
    if service is None and what == "commands":
        return [f"{prefix}.cmd.>"] if kind == "nats" else [f"{prefix}.cmd", f"{prefix}.cmd.dead"]
    if service is None and what in ("audit", "track"):
        return [f"{prefix}.{what}.>"] if kind == "nats" else [f"{prefix}.{what}"]
    return [what]


async def tail(config: Config, what: str, service: str | None, out: Print = print_line) -> None:
    kind, url = _broker(config, service)
    names = followed(kind, config.gateway.prefix, what, service)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if kind == "nats":
        await tail_nats(url, names, stop, out)
    else:
        await tail_kafka(url, names, stop, out)


def cmd_tail(args: argparse.Namespace) -> int:
    from busgate.cli import _config

    config = _config(args.config)
    quiet_clients()
    try:
        asyncio.run(tail(config, args.what, args.service))
    except LookupError as exc:
        print(f"busgate tail: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # the broker unreachable, a bad URL: say so, no traceback
        print(f"busgate tail: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


def add_parser(sub: Any) -> None:
    """``tail`` on the ``busgate`` command line."""
    tail_ = sub.add_parser("tail", help="print the messages of a topic as they arrive")
    tail_.add_argument(
        "what",
        metavar="commands|audit|track|TOPIC",
        help="'commands', 'audit', 'track', or a subject/topic",
    )
    tail_.add_argument(
        "--service", help="a [services.NAME] whose broker to read (default: the bus)"
    )
    tail_.add_argument("--config", required=True)
    tail_.set_defaults(func=cmd_tail)
