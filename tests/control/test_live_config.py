"""Config pushed through the bus while two edges and an adapter serve calls, on both buses:
a new channel on a new system, a removed path and channel, a new token key, a new alias and a
changed response header. No call may fail, and every node must run the new revision within
the bound."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from busgate import bus as bus_
from busgate.adapters.service import AdapterService
from busgate.bus.config_source import PushRefused, Revisions, initial_config
from busgate.contracts.config import Token, loads
from busgate.edge import keys
from busgate.edge.app import create_app
from busgate.edge.tokens import TokenService
from tests.control.conftest import TRANSPORTS

OLD_SECRET = "o" * 64
NEW_SECRET = "n" * 64


def shared(runner: str, *, revision: int) -> str:
    """The pushed text: revision 1, or revision 2 with the changes."""
    first = revision == 1
    paths = '"meta" = { public = true }' if first else '"meta" = { disabled = true }'
    return f"""
[systems.demo]
type = "rpc"
base_url = "{runner}/api/demo"
timeout = 5.0

[systems.{"old" if first else "fresh"}]
type = "rpc"
base_url = "{runner}/api/demo"
timeout = 5.0

[tokens.main]
secret = "{OLD_SECRET if first else NEW_SECRET}"

[channels.demo]
system = "demo"
paths = {{ {paths} }}
response_headers = {{ "X-Revision" = "{1 if first else 2}" }}
{"" if first else '[channels.demo.aliases."v2/echo"]' + chr(10) + 'target = "echo"'}

[channels.secure]
system = "demo"
auth = "main"

[channels.{"old" if first else "fresh"}]
system = "{"old" if first else "fresh"}"
"""


def node_config(bus: str, prefix: str) -> Any:
    return loads(
        f"""
[gateway]
id = "lc"
bus = "{bus}"
prefix = "{prefix}"
config_source = "bus"

[systems.boot]
type = "rpc"
base_url = "http://127.0.0.1:9/"
""",
        env={},
    )


def mint(secret: str, *roles: str) -> str:
    claims = {"roles": list(roles)}
    return TokenService("main", Token(secret=secret)).access("u:1", claims, "sid-1")


@contextlib.asynccontextmanager
async def fleet(bus: str, prefix: str) -> AsyncIterator[tuple[list[TestServer], AdapterService]]:
    config = await initial_config(node_config(bus, prefix))
    adapter = AdapterService(config)
    await adapter.start()
    # Its presence heartbeat, as `busgate adapter` runs it (run_forever): without it the
    # edges forget the adapter 6 s after its last announcement (503 no_adapter under a slow
    # Kafka push).
    gateway = config.gateway
    beat = asyncio.create_task(
        adapter.bus.announce_forever(gateway.presence_interval, gateway.presence_ttl)
    )
    edges = [TestServer(create_app(config), host="127.0.0.1") for _ in range(2)]
    try:
        for edge in edges:
            await edge.start_server()
        yield edges, adapter
    finally:
        for edge in edges:
            await edge.close()
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat
        await adapter.stop()


async def load(
    http: aiohttp.ClientSession,
    edges: list[TestServer],
    stop: asyncio.Event,
    seen: Counter[int | str],
) -> None:
    """Calls on a channel every revision keeps, back to back, until ``stop``."""
    i = 0
    while not stop.is_set():
        edge = edges[i % len(edges)]
        i += 1
        async with http.post(edge.make_url("/api/request/demo/echo"), json={"i": i}) as resp:
            seen[resp.status] += 1
            seen[f"X-Revision: {resp.headers.get('X-Revision')}"] += 1


async def call(http: aiohttp.ClientSession, edge: TestServer, path: str, **body: Any) -> Any:
    async with http.post(edge.make_url(path), json=body) as resp:
        return resp.status, await resp.text()


@contextlib.asynccontextmanager
async def pusher(bus_url: str, prefix: str) -> AsyncIterator[Revisions]:
    """What ``busgate config push`` uses: a connection to the bus and its revisions store."""
    cli = bus_.from_url(bus_url, node=f"cli-{prefix}", prefix=prefix)
    await cli.connect()
    revisions = Revisions(cli)
    await revisions.start()
    try:
        yield revisions
    finally:
        await revisions.close()
        await cli.close()


async def applied_everywhere(revisions: Revisions, number: int) -> None:
    """Until the fleet's three nodes (two edges, the adapter) run revision ``number``."""
    async with asyncio.timeout(30):
        await revisions.nodes.wait_until(
            lambda: len(rs := revisions.reports()) == 3 and all(r.revision == number for r in rs)
        )


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_push_under_load(transport: str, bus_url: str, runner_url: str) -> None:
    prefix = f"lc{uuid.uuid4().hex[:6]}"
    async with pusher(bus_url, prefix) as revisions:
        await revisions.push(shared(runner_url, revision=1))
        async with fleet(bus_url, prefix) as (edges, adapter), aiohttp.ClientSession() as http:
            old_token = mint(OLD_SECRET)
            for edge in edges:  # revision 1 runs everywhere
                async with http.post(edge.make_url("/api/request/old/echo"), json={}) as resp:
                    assert resp.status == 200, await resp.text()
                async with http.get(edge.make_url("/api/request/demo/meta")) as resp:
                    assert resp.status == 200
            seen: Counter[int | str] = Counter()
            stop = asyncio.Event()
            loaders = [asyncio.create_task(load(http, edges, stop, seen)) for _ in range(4)]
            # A call in flight on the channel and system revision 2 removes: it must end well.
            slow = asyncio.create_task(call(http, edges[0], "/api/request/old/sleep", ms=800))
            await asyncio.sleep(0.2)  # let the load and the slow call get going
            pushed = await revisions.push(shared(runner_url, revision=2))
            await applied_everywhere(revisions, pushed.number)
            delays = {
                f"{r.role}-{r.node}": round(r.applied_at - pushed.pushed_at, 3)
                for r in revisions.reports()
            }
            print(f"{transport}: push to applied, per node (s): {delays}")
            edge_delays = [d for n, d in delays.items() if n.startswith("edge")]
            assert max(edge_delays) < 1.0
            # An adapter applies once it serves the new system: on Kafka after its consumer
            # group join (seconds on Tansu), on NATS at once.
            assert max(delays.values()) < (1.0 if transport == "nats" else 10.0)
            assert await slow == (200, '{"slept":800}')
            for edge in edges:
                async with http.get(edge.make_url("/api/request/demo/meta")) as resp:
                    assert resp.status == 404
                async with http.post(edge.make_url("/api/request/old/echo"), json={}) as resp:
                    assert resp.status == 404
                async with http.post(edge.make_url("/api/request/fresh/echo"), json={}) as resp:
                    assert resp.status == 200, await resp.text()
                # Channel shaping too: the new alias and response header, without a restart.
                url = edge.make_url("/api/request/demo/v2/echo")
                async with http.post(url, json={"via": "alias"}) as resp:
                    assert resp.status == 200, await resp.text()
                    assert await resp.json() == {"via": "alias"}
                    assert resp.headers["X-Revision"] == "2"
                for token in (old_token, mint(NEW_SECRET)):  # the old key stays valid
                    headers = {"Authorization": f"Bearer {token}"}
                    url = edge.make_url("/api/request/secure/echo")
                    async with http.post(url, json={}, headers=headers) as resp:
                        assert resp.status == 200, await resp.text()
                headers = {"Authorization": f"Bearer {mint('x' * 64)}"}
                url = edge.make_url("/api/request/secure/echo")
                async with http.post(url, json={}, headers=headers) as resp:
                    assert resp.status == 401
            # POST /api/control: the refresh fans out over the control subject to every node.
            headers = {"Authorization": f"Bearer {mint(NEW_SECRET, 'admin')}"}
            async with http.post(edges[1].make_url("/api/control"), headers=headers) as resp:
                assert resp.status == 200, await resp.text()
                nodes = (await resp.json())["nodes"]
            assert sorted(n["role"] for n in nodes) == ["adapter", "edge", "edge"]
            assert all(n["applied"] and n["revision"] == pushed.number for n in nodes), nodes
            stop.set()
            await asyncio.gather(*loaders)
            assert set(seen) == {200, "X-Revision: 1", "X-Revision: 2"}, seen
            assert seen[200] > 20
            assert adapter.systems == ["demo", "fresh"]


@pytest.mark.nats
async def test_bad_push_is_refused(nats_server: Any) -> None:
    cli = bus_.from_url(nats_server.url, node="cli-bad", prefix=f"bp{uuid.uuid4().hex[:6]}")
    await cli.connect()
    revisions = Revisions(cli)
    await revisions.start()
    try:
        good = await revisions.push('[systems.a]\ntype = "rpc"\nbase_url = "http://x/"\n')
        with pytest.raises(PushRefused, match=r"channels\.c\.system: unknown system 'nope'"):
            await revisions.push('[channels.c]\nsystem = "nope"\n')
        with pytest.raises(PushRefused):
            await revisions.push("[systems.a\n")
        assert revisions.live() == good
        assert [r.number for r in revisions.history()] == [1]
        back = await revisions.rollback(1)
        assert back.number == 2 and back.rollback_of == 1 and back.text == good.text
        other = Revisions(cli)  # a second pusher, its own view
        await other.start()
        try:
            pushed = await asyncio.gather(revisions.push(good.text), other.push(good.text + "\n"))
        finally:
            await other.close()
        assert sorted(p.number for p in pushed) == [3, 4]
    finally:
        await revisions.close()
        await cli.close()


@pytest.mark.nats
async def test_node_that_cannot_apply_keeps_its_revision(nats_server: Any, runner_url: str) -> None:
    """A revision valid as text but not runnable on a node (its secret's variable is unset
    there): the node keeps the previous one and says so; the others apply it."""
    prefix = f"ka{uuid.uuid4().hex[:6]}"
    async with pusher(nats_server.url, prefix) as revisions:
        await revisions.push(shared(runner_url, revision=1))
        async with fleet(nats_server.url, prefix) as (edges, _), aiohttp.ClientSession() as http:
            broken = shared(runner_url, revision=2).replace(
                f'"{NEW_SECRET}"', '"env:BUSGATE_TEST_UNSET_SECRET"'
            )
            pushed = await revisions.push(broken)
            async with asyncio.timeout(10):
                await revisions.nodes.wait_until(
                    lambda: (
                        all(
                            r.revision == pushed.number or r.failed == pushed.number
                            for r in revisions.reports()
                        )
                        and len(revisions.reports()) == 3
                    )
                )
            by_role = {r.role: r for r in revisions.reports()}
            assert by_role["adapter"].revision == 2
            edge = by_role["edge"]
            assert (edge.revision, edge.failed) == (1, 2)
            assert "BUSGATE_TEST_UNSET_SECRET" in edge.error
            for server in edges:  # still revision 1: its channel and its token key
                headers = {"Authorization": f"Bearer {mint(OLD_SECRET)}"}
                url = server.make_url("/api/request/secure/echo")
                async with http.post(url, json={}, headers=headers) as resp:
                    assert resp.status == 200, await resp.text()
                async with http.get(server.make_url("/api/request/demo/meta")) as resp:
                    assert resp.status == 200


@pytest.mark.nats
async def test_file_source_is_reread(nats_server: Any, runner_url: str, tmp_path: Any) -> None:
    """``gateway.refresh``: an edge re-reads its file and applies the change; a broken edit
    is not applied and the node runs on."""
    path = tmp_path / "busgate.toml"
    head = f'[gateway]\nbus = "{nats_server.url}"\nprefix = "fr{uuid.uuid4().hex[:6]}"\n'
    head += "refresh = 0.1\n"
    path.write_text(head + shared(runner_url, revision=1))
    config = loads(path.read_text(), env={})
    server = TestServer(create_app(config, config_path=str(path)), host="127.0.0.1")
    await server.start_server()
    live = server.app[keys.LIVE]
    try:
        async with aiohttp.ClientSession() as http:
            assert live.source is not None
            live.source.applied.clear()
            path.write_text(head + "[channels.broken]\nsystem = 'nope'\n")
            async with asyncio.timeout(5):
                await live.source.applied.wait()
            assert "unknown system 'nope'" in live.source.error
            assert "demo" in live.config.channels
            live.source.applied.clear()
            path.write_text(head + shared(runner_url, revision=2))
            async with asyncio.timeout(5):
                await live.source.applied.wait()
            assert live.source.error == ""
            async with http.get(server.make_url("/api/request/demo/meta")) as resp:
                assert resp.status == 404
    finally:
        await server.close()


def with_retry(runner: str, retry: bool) -> str:
    """System ``demo`` with a retry policy (revision 2) or without (revision 1)."""
    policy = '\n[channels.demo.resilience.retry]\nattempts = 3\nwait = 0.05\nmethods = ["POST"]\n'
    return f"""
[systems.demo]
type = "rpc"
base_url = "{runner}/api/demo"

[channels.demo]
system = "demo"
{policy if retry else ""}"""


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_pushed_retry_policy_reaches_the_adapter_client(
    transport: str, bus_url: str, runner_url: str
) -> None:
    """The adapter builds a system's client with the retry policies of its channels: a push
    that adds one gets the system a new client (the old one drains), and the runner's one
    failure is retried away."""
    prefix = f"rt{uuid.uuid4().hex[:6]}"
    async with pusher(bus_url, prefix) as revisions:
        await revisions.push(with_retry(runner_url, retry=False))
        async with fleet(bus_url, prefix) as (edges, adapter), aiohttp.ClientSession() as http:
            flaky = "/api/request/demo/flaky"
            before = adapter.clients["demo"]
            status, _ = await call(http, edges[0], flaky, key=f"{prefix}-1", failures=1)
            assert status == 502  # the runner's one failure, not retried
            pushed = await revisions.push(with_retry(runner_url, retry=True))
            await applied_everywhere(revisions, pushed.number)
            assert adapter.clients["demo"] is not before and before in adapter.retired
            status, text = await call(http, edges[0], flaky, key=f"{prefix}-2", failures=1)
            assert status == 200, text
            assert '"calls":2' in text and '"attempt":2' in text


@pytest.mark.nats
async def test_pushed_call_logs_apply_on_the_adapter(nats_server: Any, runner_url: str) -> None:
    """``[systems.S.log]`` added by a push: the adapter logs the calls after it (it used to
    keep the logs it started with)."""
    import nats

    from busgate.contracts.codec import decode
    from busgate.contracts.wire import CallLog

    prefix = f"cl{uuid.uuid4().hex[:6]}"
    subject = f"{prefix}.logs.requests"
    nc = await nats.connect(nats_server.url)
    logged: asyncio.Queue[bytes] = asyncio.Queue()

    async def got(msg: Any) -> None:
        logged.put_nowait(msg.data)

    await nc.subscribe(subject, cb=got)
    await nc.flush()
    try:
        async with pusher(nats_server.url, prefix) as revisions:
            await revisions.push(with_retry(runner_url, retry=False))
            async with (
                fleet(nats_server.url, prefix) as (edges, _),
                aiohttp.ClientSession() as http,
            ):
                status, _ = await call(http, edges[0], "/api/request/demo/echo", n=1)
                assert status == 200
                text = (
                    with_retry(runner_url, retry=False)
                    + f'\n[systems.demo.log]\nrequests = "{subject}"\n'
                )
                pushed = await revisions.push(text)
                await applied_everywhere(revisions, pushed.number)
                status, _ = await call(http, edges[1], "/api/request/demo/echo", marker=prefix)
                assert status == 200
                async with asyncio.timeout(10):
                    event = decode(await logged.get())  # the first logged: the call after the push
                assert isinstance(event, CallLog)
                assert (event.channel, event.path) == ("demo", "echo")
                assert prefix.encode() in (event.body or b"")  # not the call before the push
    finally:
        await nc.close()
