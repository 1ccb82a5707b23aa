"""The AsyncAPI document of the bus: its subjects/topics and the messages on each.

Channels and operations come from FastStream's AsyncAPI generation (the same code that
documents a bus-native runner, ``busgate.runners.kit.Runner.asyncapi``): each channel is
declared on a FastStream broker that is never connected. FastStream knows payloads only
through pydantic, and busgate's envelopes are msgspec Structs carried as MessagePack, so the
payloads are filled in afterwards from msgspec's JSON Schema of the contracts.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import msgspec
from faststream.kafka import KafkaBroker
from faststream.nats import NatsBroker
from faststream.specification.asyncapi import AsyncAPI

from busgate.bus import parse_url
from busgate.bus.naming import Names
from busgate.contracts.wire import (
    Cancel,
    Credit,
    DeadLetter,
    Presence,
    Reply,
    Request,
    StreamStep,
)

CONTENT_TYPE = "application/msgpack"
SCHEMAS = "#/components/schemas/{name}"

Broker = NatsBroker | KafkaBroker


def broker_for(url: str) -> Broker:
    """An unconnected FastStream broker for a bus URL, with any credentials left out (the
    document is served to anyone who can reach the edge)."""
    scheme, servers, _ = parse_url(url)
    hosts = [urlsplit(s if "://" in s else f"x://{s}").netloc.rpartition("@")[2] for s in servers]
    if scheme == "nats":
        return NatsBroker([f"nats://{h}" for h in hosts], logger=None)
    return KafkaBroker(hosts, logger=None)


async def _ignore(body: bytes) -> None:
    """Stands for whoever receives a channel's messages: only its signature is read."""


def declare(
    broker: Broker,
    address: str,
    about: str,
    *,
    receive: bool,
    group: str = "",
) -> None:
    """Declare ``address`` on ``broker``: a subscriber (``receive``, in the queue/consumer
    ``group``) or a publisher, as FastStream's document shows them."""
    if not receive:
        broker.publisher(address, title=address, description=about, schema=bytes)
    elif isinstance(broker, NatsBroker):
        broker.subscriber(address, queue=group, title=address, description=about)(_ignore)
    else:
        sub = broker.subscriber(address, group_id=group or None, title=address, description=about)
        sub(_ignore)


def document(
    broker: Broker,
    messages: dict[str, tuple[type[msgspec.Struct], ...]],
    *,
    title: str,
    description: str,
) -> dict[str, Any]:
    """FastStream's AsyncAPI 3.0 document of ``broker``, with each channel's payload the
    JSON Schema of its ``messages`` (channel title → the envelopes it carries)."""
    spec = AsyncAPI(
        broker, title=title, version="1", description=description, schema_version="3.0.0"
    )
    doc: dict[str, Any] = msgspec.json.decode(spec.to_specification().to_json())
    types = {t for carried in messages.values() for t in carried}
    _, schemas = msgspec.json.schema_components(
        sorted(types, key=lambda t: t.__name__), ref_template=SCHEMAS
    )
    components = doc.setdefault("components", {})
    placeholders = components.get("schemas", {})
    for name, message in components.get("messages", {}).items():
        channel = name.rpartition(":")[0]
        carried = messages.get(channel)
        if not carried:
            continue
        refs = [{"$ref": SCHEMAS.format(name=t.__name__)} for t in carried]
        old = message.get("payload", {}).get("$ref", "").rpartition("/")[2]
        placeholders.pop(unquote(old), None)  # the ref is percent-encoded, the key is not
        message["payload"] = refs[0] if len(refs) == 1 else {"oneOf": refs}
        message["contentType"] = CONTENT_TYPE
        message.pop("correlationId", None)  # the request id is in the payload (and headers)
    components["schemas"] = {**placeholders, **schemas}
    doc["defaultContentType"] = CONTENT_TYPE
    return doc


def bus_document(
    url: str, prefix: str, systems: dict[str, str], *, title: str = "busgate bus"
) -> dict[str, Any]:
    """The whole bus of a gateway: requests per system (``systems``: name → type), replies
    and stream steps to edge nodes, control broadcasts and durable commands."""
    names = Names(prefix)
    broker = broker_for(url)
    nats = isinstance(broker, NatsBroker)
    messages: dict[str, tuple[type[msgspec.Struct], ...]] = {}
    for system, kind in sorted(systems.items()):
        who = "its bus-native runners" if kind == "bus" else "its adapters"
        address = names.request(system)
        about = f"Calls for system {system!r}, shared by {who} (queue/consumer group)."
        declare(broker, address, about, receive=True, group=names.group(system))
        messages[address] = (Request,)
    reply = names.reply("{node}") + (".{request}" if nats else "")
    declare(
        broker,
        reply,
        "Replies and stream steps to the edge node that asked; Credits (stream flow control)"
        " to the adapter or runner that serves the stream (StreamStep.credit_to).",
        receive=False,
    )
    messages[reply] = (Reply, StreamStep, Credit)
    declare(
        broker,
        names.control,
        "Broadcast to every node: Presence heartbeats of adapters and runners, Cancels of"
        " streams whose client went away.",
        receive=False,
    )
    messages[names.control] = (Presence, Cancel)
    commands = names.command(">") if nats else names.command()
    declare(
        broker,
        commands,
        "Durable commands (JetStream on NATS), executed once by the commands system.",
        receive=False,
    )
    messages[commands] = (Request,)
    dead = f"{names.command('_dead')}.{{system}}.{{id}}" if nats else f"{names.command()}.dead"
    declare(broker, dead, "Commands that failed every attempt.", receive=False)
    messages[dead] = (DeadLetter,)
    description = (
        "busgate's message bus: envelopes are MessagePack-encoded msgspec Structs, tagged by"
        " field `t` and versioned by `v`; unknown fields are ignored."
    )
    return document(broker, messages, title=title, description=description)
