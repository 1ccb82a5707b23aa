"""The edge side of commands on real brokers, no adapter: ``accepted`` is what a command shows
before any adapter took it; a broker that is away answers 503, never 202; one Idempotency-Key
sent to two edge nodes at once publishes one command."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

from busgate.brokers import Broker, NatsServer, TansuBroker
from busgate.bus.store import open_store
from busgate.contracts.commands import CommandStatus
from busgate.contracts.config import Config, parse
from busgate.edge.app import create_app
from busgate.edge.tokens import api_key_hash
from tests.bus.conftest import TRANSPORTS


@pytest.fixture(scope="module", params=TRANSPORTS)
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    """Its own broker per transport: the 503 test stops it."""
    own: Broker = NatsServer() if request.param == "nats" else TansuBroker()
    with own:
        yield own


def config_for(broker: Broker, prefix: str) -> Config:
    return parse(
        {
            "gateway": {"id": "t", "bus": broker.url, "prefix": prefix},
            "systems": {"demo": {"type": "rpc", "base_url": "http://127.0.0.1:9"}},
            "commands": {"system": "demo"},
        }
    )


@contextlib.asynccontextmanager
async def two_edges(config: Config) -> AsyncIterator[list[TestClient]]:
    clients = [TestClient(TestServer(create_app(config))) for _ in range(2)]
    for client in clients:
        await client.start_server()
    try:
        yield clients
    finally:
        for client in clients:
            await client.close()


@pytest.fixture
async def edges(broker: Broker) -> AsyncIterator[list[TestClient]]:
    """Two edge nodes on one bus (a fresh prefix: nothing left from other tests)."""
    async with two_edges(config_for(broker, f"t{uuid.uuid4().hex[:8]}")) as clients:
        yield clients


async def published(client: TestClient) -> int:
    """Commands on the bus so far: JetStream stream messages / Kafka end offsets."""
    from busgate.edge import keys

    bus = client.server.app[keys.BUS]
    if broker_kind(client) == "nats":
        await bus.ensure_command_stream()
        js = bus.nc.jetstream()
        info = await js.stream_info(bus.command_stream)
        return int(info.state.messages)
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from busgate.bus.kafka.internals import stop_consumer

    topic = bus.names.command()
    consumer = AIOKafkaConsumer(bootstrap_servers=bus.servers)
    await consumer.start()
    try:
        parts = (await bus._topics.partition_counts([topic])).get(topic, 0)
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(parts)])
        return sum(ends.values())
    finally:
        await stop_consumer(consumer, 5)


def broker_kind(client: TestClient) -> str:
    from busgate.edge import keys

    return "nats" if client.server.app[keys.CONFIG].gateway.bus.startswith("nats") else "kafka"


async def test_accepted_until_an_adapter_takes_it(edges):
    edge = edges[0]
    resp = await edge.post("/api/command/orders/create", json={"sku": "A"})
    assert resp.status == 202
    command_id = (await resp.json())["commandId"]
    status = await edges[1].get(f"/api/command/status/{command_id}")  # any edge knows it
    assert status.status == 200
    assert await status.json() == {
        "commandId": command_id,
        "status": "accepted",
        "attempts": 0,
        "path": "orders/create",
    }


async def test_same_idempotency_key_on_two_edges_publishes_once(edges):
    key = {"Idempotency-Key": uuid.uuid4().hex}
    before = await published(edges[0])
    answers = await asyncio.gather(
        *(e.post("/api/command/orders/once", json={"n": 1}, headers=key) for e in edges)
    )
    assert [r.status for r in answers] == [202, 202]
    ids = {(await r.json())["commandId"] for r in answers}
    assert len(ids) == 1
    assert sorted(r.headers.get("Idempotent-Replayed", "") for r in answers) == ["", "true"]
    assert await published(edges[0]) == before + 1


async def test_bad_command_paths_are_400(edges):
    resp = await edges[0].post("/api/command", json={"path": "a/./b", "payload": {}})
    assert resp.status == 400
    json_type = {"content-type": "application/json"}
    resp = await edges[0].post("/api/command", data=b"[1]", headers=json_type)
    assert resp.status == 400


async def test_stray_bytes_in_a_forwarded_header_are_400_and_publish_nothing(edges):
    """``Accept`` is forwarded to the runner inside the command: bytes that are not UTF-8
    broke the envelope's encoder (a 500) before; now 400 as on ``/api/request``."""
    from tests.raw_http import exchange, request

    before = await published(edges[0])
    lines = (b"Accept: \xff\xfe\xc3(", b"Content-Type: application/json")
    answer = await exchange(
        edges[0].port, request("POST", "/api/command/orders/create", *lines, body=b"{}")
    )
    assert answer.status == 400, answer.body
    assert "accept" in msgspec.json.decode(answer.body)["error"]["message"]
    assert await published(edges[0]) == before


async def test_broker_down_is_503_never_202(edges, broker):
    broker.stop()
    try:
        resp = await edges[0].post("/api/command/orders/create", json={})
        assert resp.status == 503, await resp.text()
        assert (await resp.json())["error"]["code"] == "bus_unavailable"
    finally:
        broker.start()
    # an edge closed right after the restart closes cleanly (it used to raise CleanupError
    # with aiokafka's CancelledErrors on Kafka)
    await edges[0].close()
    # and once the broker is back, commands are accepted again
    end = asyncio.get_running_loop().time() + 30
    while (resp := await edges[1].post("/api/command/orders/create", json={})).status != 202:
        assert resp.status == 503
        assert asyncio.get_running_loop().time() < end, "not accepting commands again"
        await asyncio.sleep(0.2)


async def idempotency_on_bus(client: TestClient) -> bool:
    """Whether the ``idempotency`` store exists on the bus (NATS bucket / Kafka topic)."""
    from busgate.edge import keys

    bus = client.server.app[keys.BUS]
    if broker_kind(client) == "nats":
        import nats.js.errors

        from busgate.bus.store.nats import bucket_name

        try:
            await bus.nc.jetstream().stream_info(
                f"KV_{bucket_name(bus.names.prefix, 'idempotency')}"
            )
        except nats.js.errors.NotFoundError:
            return False
        return True
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bus.servers)
    await admin.start()
    try:
        return f"{bus.names.prefix}.idempotency" in await admin.list_topics()
    finally:
        await admin.close()


async def test_the_idempotency_store_opens_with_the_first_key(edges):
    """An edge whose callers send no Idempotency-Key opens no idempotency store."""
    from busgate.edge import keys

    edge = edges[0]
    resp = await edge.post("/api/command/orders/create", json={})
    assert resp.status == 202
    assert edge.server.app[keys.IDEMPOTENCY].store is None
    assert not await idempotency_on_bus(edge)
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = await edge.post("/api/command/orders/create", json={}, headers=key)
    again = await edge.post("/api/command/orders/create", json={}, headers=key)
    assert (first.status, again.status) == (202, 202)
    assert (await first.json())["commandId"] == (await again.json())["commandId"]
    assert await idempotency_on_bus(edge)


KEYS = {"alice": secrets.token_urlsafe(24), "bob": secrets.token_urlsafe(24)}
ROOT_KEY = secrets.token_urlsafe(24)


def keyed_config(broker: Broker, prefix: str) -> Config:
    """Commands guarded by API keys: alice and bob issue, root (admin) reads anybody's."""
    api_keys = {name: {"hash": api_key_hash(key), "roles": ["user"]} for name, key in KEYS.items()}
    api_keys["root"] = {"hash": api_key_hash(ROOT_KEY), "roles": ["admin"]}
    return parse(
        {
            "gateway": {"id": "t", "bus": broker.url, "prefix": prefix},
            "systems": {"demo": {"type": "rpc", "base_url": "http://127.0.0.1:9"}},
            "tokens": {
                "main": {
                    "secret": secrets.token_urlsafe(48),
                    "api_key_header": "X-Api-Key",
                    "api_keys": api_keys,
                }
            },
            "commands": {"system": "demo", "token": "main", "paths": {"*": {"roles": []}}},
        }
    )


@pytest.fixture
async def keyed_edges(broker: Broker) -> AsyncIterator[list[TestClient]]:
    async with two_edges(keyed_config(broker, f"t{uuid.uuid4().hex[:8]}")) as clients:
        yield clients


def as_key(key: str) -> dict[str, str]:
    return {"X-Api-Key": key}


async def test_accepted_on_another_edge_only_for_the_issuer_or_an_admin(keyed_edges):
    """Before any adapter took it, the status another edge reads (on NATS from the command
    stream, on Kafka from the store) keeps the issuer: others get 404, an admin sees it."""
    first, second = keyed_edges
    resp = await first.post("/api/command/orders/create", json={}, headers=as_key(KEYS["alice"]))
    assert resp.status == 202, await resp.text()
    url = f"/api/command/status/{(await resp.json())['commandId']}"
    mine = await second.get(url, headers=as_key(KEYS["alice"]))
    assert mine.status == 200
    assert (await mine.json())["status"] == "accepted"
    admin = await second.get(url, headers=as_key(ROOT_KEY))
    assert (admin.status, (await admin.json())["status"]) == (200, "accepted")
    for other in (as_key(KEYS["bob"]), {}):
        resp = await second.get(url, headers=other)
        assert resp.status in (401, 404), await resp.text()
        if resp.status == 404:
            assert (await resp.json())["error"]["code"] == "not_found"
    # an id nobody issued, well-formed, is 404 too (not an error from the stream lookup)
    unknown = await second.get(f"/api/command/status/{uuid.uuid4().hex}", headers=as_key(ROOT_KEY))
    assert unknown.status == 404


@pytest.mark.parametrize("broker", ["nats"], indirect=True)  # a NATS mechanism: no Kafka run
async def test_nats_accepted_is_read_from_the_stream_not_written_to_the_store(edges):
    """On NATS the edge writes no ``accepted`` record (the costly part of a command): the
    store has nothing until an adapter writes, the stream answers ``accepted`` until then,
    the adapter's record wins after, and no edge watches the status bucket."""
    from busgate.edge import keys

    resp = await edges[0].post("/api/command/orders/create", json={"sku": "B"})
    assert resp.status == 202
    command_id = (await resp.json())["commandId"]
    bus = edges[0].server.app[keys.BUS]
    store = open_store(bus, "commands", CommandStatus, view=False)
    await store.start()
    try:
        assert await store.get(command_id) is None
        status = await edges[1].get(f"/api/command/status/{command_id}")
        assert (await status.json())["status"] == "accepted"
        running = CommandStatus(id=command_id, status="running", path="orders/create", attempts=1)
        await store.put(command_id, running)
        status = await edges[1].get(f"/api/command/status/{command_id}")
        assert (await status.json())["status"] == "running"
        info = await bus.nc.jetstream().stream_info(f"KV_{store.bucket}")
        assert info.state.consumer_count == 0, "an edge watches the status bucket"
    finally:
        await store.close()


@pytest.mark.parametrize("broker", ["nats"], indirect=True)  # a NATS mechanism: no Kafka run
async def test_nats_status_older_than_the_retention_is_gone(broker):
    """A command the stream still holds but older than ``retention`` is not ``accepted``
    any more (its status, written later, has expired too): 404."""
    config = config_for(broker, f"t{uuid.uuid4().hex[:8]}")
    assert config.commands is not None
    config = msgspec.structs.replace(
        config, commands=msgspec.structs.replace(config.commands, retention=0.2)
    )
    client = TestClient(TestServer(create_app(config)))
    await client.start_server()
    try:
        resp = await client.post("/api/command/orders/create", json={})
        url = f"/api/command/status/{(await resp.json())['commandId']}"
        assert (await client.get(url)).status == 200
        await asyncio.sleep(0.3)  # the passing of time is what is tested
        assert (await client.get(url)).status == 404
    finally:
        await client.close()


@pytest.mark.parametrize("broker", ["nats"], indirect=True)  # a NATS mechanism: no Kafka run
async def test_nats_message_id_only_with_an_idempotency_key(edges):
    """The JetStream message id (the stream's duplicate guard) is the idempotency key's slot
    on a keyed command; an unkeyed one carries the request's headers and no message id."""
    from busgate.bus import headers as hdr
    from busgate.bus.commands import MSG_ID, command_name
    from busgate.edge import keys
    from busgate.edge.idempotency import fingerprint

    bus = edges[0].server.app[keys.BUS]

    async def stored_headers(command_id: str) -> dict[str, str]:
        subject = bus.names.command(command_name("demo", command_id))
        msg = await bus.nc.jetstream().get_last_msg(bus.command_stream, subject)
        return dict(msg.headers or {})

    key = uuid.uuid4().hex
    keyed = await edges[0].post("/api/command/orders/k", json={}, headers={"Idempotency-Key": key})
    plain = await edges[0].post("/api/command/orders/p", json={})
    assert (keyed.status, plain.status) == (202, 202)
    keyed_headers = await stored_headers((await keyed.json())["commandId"])
    assert keyed_headers[MSG_ID] == fingerprint("command", "anonymous", key)
    plain_id = (await plain.json())["commandId"]
    plain_headers = await stored_headers(plain_id)
    assert MSG_ID not in plain_headers
    assert plain_headers[hdr.REQUEST_ID] == plain_id
    assert plain_headers[hdr.KIND] == "command"
