"""Commands, ad hoc sends and X-Async calls through the dev stack (broker, runner, adapter and
edge as separate processes), on NATS and on Kafka: every command status is its own test."""

from __future__ import annotations

import asyncio
import secrets
import time

import aiohttp
import pytest

from tests.stack import DevStack, dev_stack

pytestmark = pytest.mark.e2e

PASSWORD = secrets.token_urlsafe(12)
ENV = {
    "BUSGATE_DEV_PASSWORD": PASSWORD,
    "BUSGATE_TOKEN_SECRET": secrets.token_urlsafe(48),
    "BUSGATE__COMMANDS__BACKOFF": "0.05",
    "BUSGATE__COMMANDS__MAX_BACKOFF": "0.2",
    "BUSGATE__COMMANDS__ACK_WAIT": "3",
    "BUSGATE__SERVICES__EVENTS__MAX_BODY": "2000000",
}
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module", params=["nats", "kafka"])
def stack(request):
    request.applymarker(getattr(pytest.mark, request.param))
    with dev_stack(request.param, env=ENV) as running:
        yield running


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def issue(http: aiohttp.ClientSession, stack: DevStack, path: str, payload: dict, **kw):
    async with http.post(f"{stack.url}/api/command/{path}", json=payload, **kw) as resp:
        assert resp.status == 202, await resp.text()
        body = await resp.json()
        assert resp.headers["Location"] == f"/api/command/status/{body['commandId']}"
        assert body["status"] == "accepted"
        return body["commandId"]


async def status_of(http, stack, command_id, headers=None) -> dict:
    async with http.get(f"{stack.url}/api/command/status/{command_id}", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def until_status(http, stack, command_id, wanted: str, within: float = 30.0) -> dict:
    end = time.monotonic() + within
    while True:
        found = await status_of(http, stack, command_id)
        if found["status"] == wanted:
            return found
        assert time.monotonic() < end, f"status stayed {found}"
        await asyncio.sleep(0.05)


async def runner_calls(http, stack, command_id: str) -> list[dict]:
    async with http.get(f"{stack.runner}/calls") as resp:
        return [c for c in await resp.json() if c.get("commandId") == command_id]


async def login(http, stack, user: str) -> dict[str, str]:
    body = {"username": user, "password": PASSWORD}
    async with http.post(f"{stack.url}/api/auth/login/auth/password", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return {"Authorization": f"Bearer {(await resp.json())['access_token']}"}


async def test_done_runs_once_with_command_id_and_attempt(stack, http):
    command_id = await issue(http, stack, "orders/create", {"sku": "A1"})
    done = await until_status(http, stack, command_id, "done")
    assert done["attempts"] == 1
    assert done["result"] == {"order": command_id, "action": "create", "sku": "A1", "attempt": 1}
    calls = await runner_calls(http, stack, command_id)
    assert [(c["commandId"], c["attempt"]) for c in calls] == [(command_id, 1)]
    assert calls[0]["parameters"] == {"sku": "A1"}


async def test_wrapped_form_takes_path_and_payload(stack, http):
    body = {"path": "orders/wrapped", "payload": {"sku": "W"}}
    async with http.post(f"{stack.url}/api/command", json=body) as resp:
        assert resp.status == 202
        command_id = (await resp.json())["commandId"]
    done = await until_status(http, stack, command_id, "done")
    assert done["result"]["action"] == "wrapped"


async def test_running_then_done_after_retries(stack, http):
    command_id = await issue(http, stack, "orders/flaky", {"fail_until": 3, "ms": 300})
    running = await until_status(http, stack, command_id, "running")
    assert running["attempts"] >= 1
    done = await until_status(http, stack, command_id, "done")
    assert done["attempts"] == 3
    attempts = [c["attempt"] for c in await runner_calls(http, stack, command_id)]
    assert attempts == [1, 2, 3]


async def test_failed_on_a_4xx_is_not_retried(stack, http):
    command_id = await issue(http, stack, "orders/bad", {"reject": True})
    failed = await until_status(http, stack, command_id, "failed")
    assert failed["httpStatus"] == 422 and failed["attempts"] == 1
    assert failed["error"]["code"] == "runner_refused"
    await asyncio.sleep(0.5)  # a retry would come after 0.05 s
    assert len(await runner_calls(http, stack, command_id)) == 1


async def test_dead_after_max_attempts(stack, http):
    command_id = await issue(http, stack, "orders/doomed", {"fail_until": 99})
    dead = await until_status(http, stack, command_id, "dead")
    assert dead["attempts"] == 5
    assert dead["error"]["code"] == "upstream_error"
    assert [c["attempt"] for c in await runner_calls(http, stack, command_id)] == [1, 2, 3, 4, 5]


async def test_status_only_for_the_issuer_or_an_admin(stack, http):
    demo = await login(http, stack, "demo")
    admin = await login(http, stack, "admin")
    command_id = await issue(http, stack, "orders/mine", {}, headers=demo)
    await until_status_as(http, stack, command_id, demo)
    async with http.get(f"{stack.url}/api/command/status/{command_id}") as resp:
        assert resp.status == 404  # anonymous is somebody else
    assert (await status_of(http, stack, command_id, admin))["commandId"] == command_id
    async with http.get(f"{stack.url}/api/command/status/nosuchcommand") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "not_found"


async def until_status_as(http, stack, command_id, headers) -> None:
    found = await status_of(http, stack, command_id, headers)
    assert found["commandId"] == command_id


async def test_role_per_path(stack, http):
    url = f"{stack.url}/api/command/admin/purge"
    async with http.post(url, json={}) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    async with http.post(url, json={}, headers=await login(http, stack, "demo")) as resp:
        assert resp.status == 403
    async with http.post(url, json={}, headers=await login(http, stack, "admin")) as resp:
        assert resp.status == 202


async def test_idempotency_key_replays_the_first_202(stack, http):
    key = {"Idempotency-Key": secrets.token_hex(8)}
    first = await issue(http, stack, "orders/once", {"sku": "I"}, headers=key)
    url = f"{stack.url}/api/command/orders/once"
    async with http.post(url, json={"sku": "I"}, headers=key) as r:
        assert r.status == 202 and r.headers["Idempotent-Replayed"] == "true"
        assert (await r.json())["commandId"] == first
    async with http.post(url, json={"sku": "J"}, headers=key) as r:
        assert r.status == 422
    await until_status(http, stack, first, "done")
    await asyncio.sleep(0.3)
    assert len(await runner_calls(http, stack, first)) == 1


async def test_send_lands_after_the_ack(stack, http):
    url = f"{stack.url}/api/send/events/orders.created/42"
    async with http.post(url, data=b'{"id":42}', headers=JSON) as resp:
        assert resp.status == 202, await resp.text()
        landed = await resp.json()
    if stack.bus == "kafka":
        assert landed["topic"] == "orders.created" and landed["offset"] >= 0
    else:
        assert landed["stream"] == "EVENTS" and landed["seq"] >= 1
    async with http.post(f"{stack.url}/api/send/events/orders.created/mod/2/5", data=b"x") as r:
        assert r.status == 202
        if stack.bus == "kafka":
            assert (await r.json())["partition"] == 1


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("nosuch/orders.created/1", 404),
        ("events/payments.created/1", 403),
        ("events/orders.created/mod/2/notanumber", 400),
        ("events/orders.created/mod/0/4", 400),
    ],
)
async def test_send_refusals(stack, http, path, status):
    async with http.post(f"{stack.url}/api/send/{path}", data=b"{}") as resp:
        assert resp.status == status
        assert (await resp.json())["error"]["code"]


async def test_send_too_large_for_the_broker_is_413(stack, http):
    big = b"x" * 1_500_000  # under the service's max_body, over the broker's 1 MB
    async with http.post(f"{stack.url}/api/send/events/orders.big/1", data=big) as resp:
        assert resp.status == 413, await resp.text()


@pytest.mark.parametrize("mode", ["gateway", "backend"])
async def test_x_async_answers_202_and_the_runner_still_runs(stack, http, mode):
    marker = secrets.token_hex(6)
    headers = {"X-Async": mode, **JSON}
    url = f"{stack.url}/api/request/demo/sleep"
    started = time.monotonic()
    async with http.post(url, json={"ms": 800, "marker": marker}, headers=headers) as resp:
        assert resp.status == 202, await resp.text()
        request_id = (await resp.json())["requestId"]
    assert time.monotonic() - started < 0.8  # not after the runner's answer
    end = time.monotonic() + 10
    while True:
        async with http.get(f"{stack.runner}/calls") as resp:
            made = await resp.json()
        calls = [c for c in made if (c["parameters"] or {}).get("marker") == marker]
        if calls:
            break
        assert time.monotonic() < end
        await asyncio.sleep(0.05)
    assert calls[0]["requestId"] == request_id


async def test_x_async_unknown_mode_is_400(stack, http):
    async with http.post(
        f"{stack.url}/api/request/demo/echo", json={}, headers={"X-Async": "later"}
    ) as resp:
        assert resp.status == 400
