"""Channel shaping end to end (issue 16): ``busgate dev`` (broker, runners, adapter, edge,
each its own process) over NATS and Kafka, with the aliases, response headers and error
levels of the dev config (``busgate/dev.toml``)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator

import aiohttp
import nats
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from nats.aio.msg import Msg

from busgate.contracts.codec import decode
from busgate.contracts.wire import AuditEvent, CallLog
from tests.stack import dev_stack, runner_process, start_tail

pytestmark = pytest.mark.e2e

PASSWORD = secrets.token_urlsafe(12)
SECRET = secrets.token_urlsafe(48)
CLIENT_SECRET = secrets.token_urlsafe(24)
TOKEN_KEY = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


class TokenIssuer:
    """A token endpoint (client credentials) and a runner that takes only its tokens, on one
    real HTTP server in the test process, so the test can count and revoke."""

    def __init__(self) -> None:
        self.fetches = 0
        self.valid: set[str] = set()
        self.refused = 0

    async def token(self, request: web.Request) -> web.Response:
        if (
            request.headers.get("Authorization")
            != aiohttp.encode_basic_auth("busgate", CLIENT_SECRET)
            or (await request.post()).get("grant_type") != "client_credentials"
        ):
            return web.json_response({"error": "invalid_client"}, status=401)
        self.fetches += 1
        token = secrets.token_urlsafe(24)
        self.valid.add(token)
        return web.json_response({"access_token": token, "expires_in": 3600})

    async def saga(self, request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in self.valid:
            self.refused += 1
            return web.json_response({"error": "invalid_token"}, status=401)
        answer = web.json_response({"ok": True, "cookie": request.headers.get("Cookie")})
        answer.set_cookie("a", "1", path="/")
        answer.set_cookie("b", "2", httponly=True)
        answer.headers["Server"] = "runner/0.1 (leaky)"
        return answer

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/oauth/token", self.token)
        app.router.add_post("/api/authed/{saga:.*}", self.saga)
        return app


@pytest.fixture(scope="module", params=["nats", "kafka"])
async def shaped(request):
    """The dev stack, plus system ``lb`` (two more runner processes behind one system) and
    system ``authed`` (a runner behind client-credentials auth)."""
    request.applymarker(getattr(pytest.mark, request.param))
    issuer = TokenIssuer()
    server = TestServer(issuer.app())
    await server.start_server()
    with runner_process() as first, runner_process() as second:
        env = {
            "RUNNER_CLIENT_SECRET": CLIENT_SECRET,
            # Every token of this stack is encrypted (JWE around the signed JWT).
            "BUSGATE_TOKEN_KEY": TOKEN_KEY,
            "BUSGATE__TOKENS__MAIN__ENCRYPTION": "A256GCM",
            "BUSGATE__TOKENS__MAIN__ENCRYPTION_KEY": "env:BUSGATE_TOKEN_KEY",
            "BUSGATE__SYSTEMS__AUTHED__TYPE": "rpc",
            "BUSGATE__SYSTEMS__AUTHED__BASE_URL": str(server.make_url("/api/authed")),
            "BUSGATE__SYSTEMS__AUTHED__COOKIES": '{ region = "eu" }',
            "BUSGATE__SYSTEMS__AUTHED__PASS_COOKIES": "true",
            "BUSGATE__SYSTEMS__AUTHED__AUTH__TOKEN_URL": "/oauth/token",
            "BUSGATE__SYSTEMS__AUTHED__AUTH__CLIENT_ID": "busgate",
            "BUSGATE__SYSTEMS__AUTHED__AUTH__CLIENT_SECRET": "env:RUNNER_CLIENT_SECRET",
            "BUSGATE__CHANNELS__AUTHED__SYSTEM": "authed",
            "BUSGATE__SYSTEMS__AUTHED__LOG__REQUESTS": "shaped.calls.requests",
            "BUSGATE__SYSTEMS__AUTHED__LOG__RESPONSES": "shaped.calls.responses",
            "BUSGATE__SYSTEMS__AUTHED__LOG__MAX_BODY": "200",
            "BUSGATE_DEV_PASSWORD": PASSWORD,
            "BUSGATE_TOKEN_SECRET": SECRET,
            "BUSGATE__SYSTEMS__LB__TYPE": "rpc",
            "BUSGATE__SYSTEMS__LB__BASE_URLS": json.dumps(
                [f"{first[0]}/api/demo", f"{second[0]}/api/demo"]
            ),
            # Short: the killed runner is tried again (and refuses) many times under load.
            "BUSGATE__SYSTEMS__LB__EJECT_TIME": "0.1",
            "BUSGATE__CHANNELS__LB__SYSTEM": "lb",
        }
        try:
            with dev_stack(request.param, env=env) as running:
                running.lb = [first, second]
                running.issuer = issuer
                yield running
        finally:
            await server.close()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def bearer(http, url: str, username: str = "demo") -> dict[str, str]:
    async with http.post(
        f"{url}/api/auth/login/auth/password",
        json={"username": username, "password": PASSWORD},
    ) as resp:
        assert resp.status == 200, await resp.text()
        return {"Authorization": f"Bearer {(await resp.json())['access_token']}"}


async def test_alias_parameters_and_mappings_reach_the_runner(shaped, http):
    headers = {**await bearer(http, shaped.url), "X-Tenant": "acme"}
    # The client tries to choose the tenant and the id itself: the mappings win.
    url = f"{shaped.url}/api/request/secure/v1/orders/42?tenant=evil&id=7&note=hi"
    async with http.get(url, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        meta = await resp.json()
        request_id = resp.headers["X-Request-Id"]
    assert meta["path"] == "meta"  # the target, not the public alias
    assert meta["user"] == "demo"  # meta.user = identity.claims.name
    assert meta["requestId"] == request_id  # busgate's own keys are not replaced
    async with http.get(f"{shaped.runner}/calls") as resp:
        seen = [c for c in await resp.json() if c["requestId"] == request_id]
    assert [c["parameters"] for c in seen] == [{"tenant": "acme", "id": "42", "note": "hi"}]


async def test_alias_methods_are_its_own(shaped, http):
    headers = await bearer(http, shaped.url)
    url = f"{shaped.url}/api/request/secure/v1/orders/42"
    async with http.post(url, json={}, headers=headers) as resp:
        assert resp.status == 405
        assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_a_public_alias_does_not_open_a_protected_target(shaped, http):
    url = f"{shaped.url}/api/request/secure/open/admin"
    async with http.get(url) as resp:  # the alias path is public, its target is not
        assert resp.status == 401
    async with http.get(url, headers=await bearer(http, shaped.url)) as resp:
        assert resp.status == 403  # admin/* needs the role admin
    async with http.get(url, headers=await bearer(http, shaped.url, "admin")) as resp:
        # The sample runner has no saga "admin/meta": its own 404 proves the call got through.
        assert resp.status == 404
        assert "no saga 'admin/meta'" in (await resp.json())["error"]


async def test_response_headers_most_specific_wins(shaped, http):
    base = f"{shaped.url}/api/request/demo"
    async with http.get(f"{base}/echo?a=1") as resp:  # path and method
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "max-age=300"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"  # the channel's
    async with http.post(f"{base}/echo", json={"a": 1}) as resp:  # path
        assert resp.headers["Cache-Control"] == "max-age=60"
    async with http.post(f"{base}/meta", json={}) as resp:  # channel
        assert resp.headers["Cache-Control"] == "no-store"
        assert "Set-Cookie" not in resp.headers
        assert resp.headers["Server"] == "busgate"


async def test_error_detail_levels(shaped, http):
    async with http.post(f"{shaped.url}/api/request/demo/fail", json={"status": 500}) as resp:
        assert resp.status == 502
        full = (await resp.json())["error"]
    assert full["code"] == "upstream_error" and "answered 500" in full["message"]
    async with http.post(f"{shaped.url}/api/request/shaped/fail", json={"status": 500}) as resp:
        assert resp.status == 502
        code = (await resp.json())["error"]
    assert code == {"code": "upstream_error", "requestId": resp.headers["X-Request-Id"]}
    async with http.post(
        f"{shaped.url}/api/request/shaped/quiet/fail", json={"status": 500}
    ) as resp:
        assert resp.status == 502
        assert await resp.read() == b""
    # The edge and adapter logs keep the detail (their lines reach us a little later than
    # the answer: awaited).
    logged = await asyncio.to_thread(
        shaped.wait_for_output, lambda out: any("answered 500" in line for line in out)
    )
    assert logged
    # A stream's error event too (the saga's third step fails).
    url = f"{shaped.url}/api/request/shaped/count?to=5&wait=0&fail_at=3"
    async with http.get(url.replace("/request/", "/stream/")) as resp:
        assert resp.status == 200
        text = (await resp.read()).decode()
        shown = resp.headers["X-Request-Id"]
    data = text.split("event: error\ndata: ", 1)[1].split("\n", 1)[0]
    assert json.loads(data) == {"error": {"code": "upstream_error", "requestId": shown}}


class BusReader:
    """busgate events (by request id) off the real bus: a NATS subscription taken before
    the calls, or the Kafka topic read from its start without a consumer group."""

    def __init__(self, stack, subject: str, topic: str, kind: type = AuditEvent) -> None:
        self.url = stack.parts["bus"]
        self.kind = stack.bus
        self.subject, self.topic, self.type = subject, topic, kind
        self.seen: dict[str, tuple] = {}
        self.arrived = asyncio.Event()

    def _take(self, data: bytes) -> None:
        event = decode(data)
        assert isinstance(event, self.type)
        self.seen[event.request_id] = (event, data)
        self.arrived.set()

    async def __aenter__(self) -> BusReader:
        if self.kind == "nats":
            self.nc = await nats.connect(self.url)

            async def on_msg(msg: Msg) -> None:
                self._take(msg.data)

            await self.nc.subscribe(self.subject, cb=on_msg)
            await self.nc.flush()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.kind == "nats":
            await self.nc.close()

    async def wait_for(self, ids: set[str], patience: float = 20) -> dict[str, tuple]:
        async with asyncio.timeout(patience):
            if self.kind == "kafka":
                await self._read_kafka(ids)
            while not ids <= self.seen.keys():
                self.arrived.clear()
                await self.arrived.wait()
        return {i: self.seen[i] for i in ids}

    async def _read_kafka(self, ids: set[str]) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        servers = self.url.removeprefix("kafka://")
        consumer = AIOKafkaConsumer(bootstrap_servers=servers, group_id=None)
        await consumer.start()
        try:
            # Nothing to await: the topic appears with the first event, on another process.
            while self.topic not in await consumer.topics():  # noqa: ASYNC110
                await asyncio.sleep(0.2)
            partitions = [
                TopicPartition(self.topic, p)
                for p in consumer.partitions_for_topic(self.topic) or ()
            ]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            while not ids <= self.seen.keys():
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    for record in records:
                        self._take(record.value)
        finally:
            await consumer.stop()


async def test_audit_events_on_the_bus_without_tokens_or_passwords(shaped, http):
    token_headers = await bearer(http, shaped.url)
    token = token_headers["Authorization"].removeprefix("Bearer ")
    async with BusReader(shaped, "busgate.audit.>", "busgate.audit") as reader:
        async with http.post(
            f"{shaped.url}/api/request/demo/echo",
            json={"password": PASSWORD, "nested": {"api_key": "k-123"}, "sku": "a-1"},
            headers={"User-Agent": "audit-test", "Cookie": "busgate_access=" + token},
        ) as resp:
            assert resp.status == 200
            echoed = resp.headers["X-Request-Id"]
        async with http.get(
            f"{shaped.url}/api/request/secure/v1/orders/7", headers=token_headers
        ) as resp:
            assert resp.status == 200
            aliased = resp.headers["X-Request-Id"]
        async with http.get(f"{shaped.url}/api/request/secure/v1/orders/8") as resp:
            assert resp.status == 401  # refusals are audited too
            refused = resp.headers["X-Request-Id"]
        async with http.post(f"{shaped.url}/api/request/demo/meta", json={}) as resp:
            not_audited = resp.headers["X-Request-Id"]
        events = await reader.wait_for({echoed, aliased, refused})
    event, raw = events[echoed]
    assert (event.channel, event.path, event.method, event.status) == ("demo", "echo", "POST", 200)
    assert event.user_agent == "audit-test" and event.client_ip == "127.0.0.1"
    assert event.duration_ms > 0 and abs(event.at - time.time()) < 60
    assert json.loads(event.body) == {"password": "***", "nested": {"api_key": "***"}, "sku": "a-1"}
    event, raw2 = events[aliased]
    assert (event.path, event.target, event.status) == ("v1/orders/7", "meta", 200)
    assert event.subject.startswith("u:") and event.roles == ("user",) and event.body is None
    event, raw3 = events[refused]
    assert (event.status, event.error, event.subject) == (401, "unauthorized", "")
    for data in (raw, raw2, raw3):
        assert PASSWORD.encode() not in data and token.encode() not in data
        assert b"k-123" not in data
    assert not_audited not in reader.seen


@contextlib.asynccontextmanager
async def tail_process(stack, what: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """``busgate tail WHAT`` as its own process, following (its stderr said so)."""
    proc = await start_tail(what, {**os.environ, "BUSGATE__GATEWAY__BUS": stack.parts["bus"]})
    try:
        yield proc
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def printed(proc: asyncio.subprocess.Process, request_id: str) -> dict:
    """The message ``busgate tail`` prints for ``request_id``."""
    assert proc.stdout is not None
    while True:
        raw = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert raw, "busgate tail ended"
        message = json.loads(raw).get("message", {})
        if request_id in (message.get("request_id"), message.get("client_id"), message.get("id")):
            return message


async def test_busgate_tail_audit_prints_the_audit_events(shaped, http):
    """``busgate tail audit`` (its own process) follows every channel's audit events:
    ``PREFIX.audit.>`` on NATS, topic ``PREFIX.audit`` on Kafka."""
    async with tail_process(shaped, "audit") as proc:
        async with http.post(
            f"{shaped.url}/api/request/demo/echo",
            json={"sku": "tail-1"},
            headers={"User-Agent": "tail-test"},
        ) as resp:
            assert resp.status == 200
            request_id = resp.headers["X-Request-Id"]
        message = await printed(proc, request_id)
        assert message["type"] == "AuditEvent"
        assert (message["channel"], message["path"], message["status"]) == ("demo", "echo", 200)
        assert message["user_agent"] == "tail-test"


async def test_busgate_tail_track_prints_the_tracking_events(shaped, http):
    """``busgate tail track`` follows what ``/api/track`` publishes (``PREFIX.track.>`` on
    NATS, topic ``PREFIX.track`` on Kafka), with the sender's identity and session."""
    headers = await bearer(http, shaped.url)
    async with tail_process(shaped, "track") as proc:
        async with http.post(
            f"{shaped.url}/api/track/secure/clicks/buy",
            json={"button": "buy-now"},
            headers=headers,
        ) as resp:
            assert resp.status == 202, await resp.text()
            request_id = (await resp.json())["requestId"]
        message = await printed(proc, request_id)
    assert message["type"] == "Request" and message["kind"] == "track"
    assert (message["channel"], message["path"]) == ("secure", "clicks/buy")
    assert message["body"] == {"button": "buy-now"}
    identity = message["identity"]
    assert identity["subject"] and identity["claims"]["name"] == "demo"
    assert identity["session_id"], identity  # the login's session travels with the event


async def test_runner_auth_fetches_one_token_and_again_once_on_a_401(shaped, http):
    issuer: TokenIssuer = shaped.issuer
    url = f"{shaped.url}/api/request/authed/work"

    async def call() -> tuple[int, dict]:
        async with http.post(url, json={}) as resp:
            return resp.status, await resp.json()

    answers = await asyncio.gather(*(call() for _ in range(20)))
    assert {status for status, _ in answers} == {200}
    assert issuer.fetches == 1  # concurrent first calls waited for one fetch
    assert answers[0][1]["cookie"] == "region=eu"  # the system's cookies go along
    async with http.post(url, json={}) as resp:  # pass_cookies: the runner's cookies pass
        assert resp.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; HttpOnly; Path=/"]
        assert resp.headers["Server"] == "busgate"  # never the runner's
    issuer.valid.clear()  # the runner no longer takes the token the adapter holds
    refused = issuer.refused
    for _ in range(5):
        assert (await call())[0] == 200
    assert issuer.fetches == 2 and issuer.refused == refused + 1
    assert not any(CLIENT_SECRET in line for line in shaped.output)
    assert not any(token in line for token in issuer.valid for line in shaped.output)


async def test_call_logs_of_a_system_on_the_bus_redacted_and_capped(shaped, http):
    requests = BusReader(shaped, "shaped.calls.requests", "shaped.calls.requests", CallLog)
    responses = BusReader(shaped, "shaped.calls.responses", "shaped.calls.responses", CallLog)
    async with requests, responses:
        body = {"user": "ann", "password": PASSWORD, "filler": "x" * 500}
        async with http.post(f"{shaped.url}/api/request/authed/log", json=body) as resp:
            assert resp.status == 200
            long_call = resp.headers["X-Request-Id"]
        async with http.post(f"{shaped.url}/api/request/authed/log", json={"a": 1}) as resp:
            short_call = resp.headers["X-Request-Id"]
        sent = await requests.wait_for({long_call, short_call})
        answered = await responses.wait_for({long_call, short_call})
    event, _ = sent[short_call]
    assert (event.direction, event.system, event.path, event.method) == (
        "request",
        "authed",
        "log",
        "POST",
    )
    assert json.loads(event.body) == {"a": 1}
    event, raw_long = sent[long_call]
    assert PASSWORD.encode() not in raw_long and len(event.body) < 300  # redacted, cut
    assert json.loads(event.body)["truncated"].startswith('{"user":"ann","password":"***"')
    event, _ = answered[short_call]
    assert (event.direction, event.status) == ("response", 200) and event.duration_ms > 0
    assert json.loads(event.body) == {"ok": True, "cookie": "***"}  # a cookie is hidden too


def readable(token: str) -> bytes:
    """Everything a client can base64-decode from a token's parts."""
    out = b""
    for part in token.split("."):
        with contextlib.suppress(ValueError):
            out += base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    return out


async def test_encrypted_tokens_are_accepted_and_their_claims_unreadable(shaped, http):
    async with http.post(
        f"{shaped.url}/api/auth/login/auth/password",
        json={"username": "demo", "password": PASSWORD},
    ) as resp:
        tokens = await resp.json()
    for name in ("access_token", "refresh_token"):
        assert tokens[name].count(".") == 4  # a compact JWE, not a JWS
        seen = readable(tokens[name])
        assert b'"enc":"A256GCM"' in seen
        assert b"demo" not in seen and b'"sub"' not in seen and b'"sid"' not in seen
    access = {"Authorization": f"Bearer {tokens['access_token']}"}
    async with http.get(f"{shaped.url}/api/request/secure/meta", headers=access) as resp:
        assert resp.status == 200
        assert (await resp.json())["identity"]["claims"]["name"] == "demo"
    async with http.post(
        f"{shaped.url}/api/auth/refresh/auth/password",
        json={"refresh_token": tokens["refresh_token"]},
    ) as resp:
        assert resp.status == 200  # the refresh token decrypts too
        assert (await resp.json())["access_token"].count(".") == 4
    assert not any(TOKEN_KEY in line for line in shaped.output)


async def test_two_runners_share_load_and_a_killed_one_fails_only_the_first_few(shaped, http):
    """Last in this module: it kills one of the two runners of system ``lb``."""
    (first, _), (_, victim) = shaped.lb
    url = f"{shaped.url}/api/request/lb/echo"
    total, workers, kill_after = 600, 12, 150
    outcomes: list[int] = []  # statuses, in the order the calls finished
    killed = asyncio.Event()
    numbers = iter(range(total))

    async def worker() -> None:
        for n in numbers:
            async with http.post(url, json={"n": n}) as resp:
                await resp.read()
                outcomes.append(resp.status)
            if len(outcomes) == kill_after and not killed.is_set():
                victim.send_signal(signal.SIGKILL)
                killed.set()

    await asyncio.gather(*(worker() for _ in range(workers)))
    assert killed.is_set()
    before = outcomes[:kill_after]
    assert before == [200] * kill_after
    failed = [i for i, status in enumerate(outcomes) if status != 200]
    # Only calls in flight on (or pooled to) the killed runner may fail, right after the kill.
    assert len(failed) <= workers, failed
    assert all(i < kill_after + 3 * workers for i in failed), failed
    async with http.get(f"{first}/calls") as resp:
        served_first = len(await resp.json())
    served_second = total - len(failed) - served_first  # all before the kill
    # Both shared the load before the kill (round robin: about half each).
    assert abs(served_second - kill_after / 2) <= workers, (served_first, served_second)
