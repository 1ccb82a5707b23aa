"""Auth end to end: ``busgate dev`` (broker, auth runner, demo runner, adapter, edge — each
its own process) plus a second edge process, over NATS and over Kafka."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time

import aiohttp
import jwt
import pytest
from yarl import URL

from busgate.brokers import start_on_free_port
from busgate.cli import DEV_CONFIG
from tests.raw_http import exchange
from tests.raw_http import request as raw_request
from tests.stack import dev_stack

pytestmark = pytest.mark.e2e

PASSWORD = secrets.token_urlsafe(12)
SECRET = secrets.token_urlsafe(48)


@pytest.fixture(scope="module", params=["nats", "kafka"])
def auth_stack(request):
    request.applymarker(getattr(pytest.mark, request.param))
    env = {"BUSGATE_DEV_PASSWORD": PASSWORD, "BUSGATE_TOKEN_SECRET": SECRET}
    with dev_stack(request.param, env=env) as running:
        yield running


@pytest.fixture(scope="module")
def second_edge(auth_stack):
    """Another edge node on the same bus and config, as a separate process."""
    env = {
        **os.environ,
        "BUSGATE_TOKEN_SECRET": SECRET,
        "BUSGATE__GATEWAY__BUS": auth_stack.parts["bus"],
    }
    port, proc = start_on_free_port(
        lambda port: subprocess.Popen(
            [sys.executable, "-m", "busgate", "edge", "--config", str(DEV_CONFIG)],
            env={**env, "BUSGATE__GATEWAY__LISTEN": f"127.0.0.1:{port}"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        timeout=60,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def login(http, url: str, username: str = "demo") -> dict:
    async with http.post(
        f"{url}/api/auth/login/auth/password",
        json={"username": username, "password": PASSWORD},
    ) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_the_three_curls(auth_stack, http):
    url = auth_stack.url
    token = (await login(http, url))["access_token"]
    async with http.get(f"{url}/api/request/secure/meta", headers=bearer(token)) as resp:
        assert resp.status == 200
        meta = await resp.json()
    # The subject is the account's random id, never the username (issue 8 item 6).
    assert meta["identity"]["subject"].startswith("u:")
    assert meta["identity"]["claims"]["name"] == "demo"
    assert meta["identity"]["roles"] == ["user"]
    async with http.get(f"{url}/api/request/secure/admin/meta", headers=bearer(token)) as resp:
        assert resp.status == 403
    async with http.get(f"{url}/api/request/secure/meta") as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")


async def test_admin_gets_past_the_edge_on_admin_paths(auth_stack, http):
    token = (await login(http, auth_stack.url, "admin"))["access_token"]
    async with http.get(
        f"{auth_stack.url}/api/request/secure/admin/meta", headers=bearer(token)
    ) as resp:
        # The sample runner has no saga "admin/meta": its own 404 proves the call got through.
        assert resp.status == 404
        assert "no saga 'admin/meta'" in (await resp.json())["error"]


async def test_wrong_password_through_the_real_runner(auth_stack, http):
    answers = []
    for username, password in (("demo", PASSWORD + "x"), ("nobody", PASSWORD)):
        async with http.post(
            f"{auth_stack.url}/api/auth/login/auth/password",
            json={"username": username, "password": password},
        ) as resp:
            answers.append((resp.status, (await resp.json())["error"]["message"]))
    assert answers[0] == answers[1] == (401, "invalid username or password")


async def test_the_password_is_never_in_the_output(auth_stack):
    assert not any(PASSWORD in line for line in auth_stack.output)
    assert not any(SECRET in line for line in auth_stack.output)


async def test_logout_on_one_edge_is_enforced_by_the_other_within_a_second(
    auth_stack, second_edge, http
):
    tokens = await login(http, auth_stack.url)
    headers = bearer(tokens["access_token"])
    async with http.get(f"{second_edge}/api/request/secure/meta", headers=headers) as resp:
        assert resp.status == 200  # the other edge takes the token
    async with http.post(
        f"{auth_stack.url}/api/auth/logout/auth/password", headers=headers
    ) as resp:
        assert resp.status == 200
    logged_out = time.perf_counter()
    status = 200
    while time.perf_counter() - logged_out < 1.0:
        async with http.get(f"{second_edge}/api/request/secure/meta", headers=headers) as resp:
            status = resp.status
        if status == 401:
            break
    elapsed = time.perf_counter() - logged_out
    print(f"{auth_stack.bus}: revocation seen by the second edge after {elapsed * 1000:.1f} ms")
    assert status == 401, f"still accepted {elapsed:.2f} s after logout"


async def test_refresh_on_one_edge_and_reuse_on_the_other(auth_stack, second_edge, http):
    tokens = await login(http, auth_stack.url)
    async with http.post(
        f"{auth_stack.url}/api/auth/refresh/auth/password",
        json={"refresh_token": tokens["refresh_token"]},
    ) as resp:
        assert resp.status == 200
        fresh = await resp.json()
    async with http.post(
        f"{second_edge}/api/auth/refresh/auth/password",
        json={"refresh_token": tokens["refresh_token"]},
    ) as resp:
        assert resp.status == 401  # reuse detected by the other edge as well
    for url in (auth_stack.url, second_edge):
        deadline = time.perf_counter() + 1.0
        status = 200
        while status != 401 and time.perf_counter() < deadline:
            async with http.get(
                f"{url}/api/request/secure/meta", headers=bearer(fresh["access_token"])
            ) as resp:
                status = resp.status
        assert status == 401


async def status_on(http, url: str, token: str, within: float = 1.0, want: int = 401) -> int:
    """The status of a call with ``token``, asked again until it is ``want`` (bounded: a
    revocation reaches another edge by watching the store, in milliseconds)."""
    deadline = time.perf_counter() + within
    while True:
        async with http.get(f"{url}/api/request/secure/meta", headers=bearer(token)) as resp:
            if resp.status == want or time.perf_counter() > deadline:
                return resp.status


async def refresh_on(http, url: str, refresh_token: str) -> tuple[int, dict]:
    async with http.post(
        f"{url}/api/auth/refresh/auth/password", json={"refresh_token": refresh_token}
    ) as resp:
        return resp.status, await resp.json()


async def register(http, url: str, username: str) -> dict:
    async with http.post(
        f"{url}/api/auth/register/auth/password",
        json={"username": username, "password": PASSWORD},
    ) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def identity(http, url: str, token: str) -> dict:
    async with http.get(f"{url}/api/request/secure/meta", headers=bearer(token)) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["identity"]


async def test_deleting_an_account_ends_all_its_sessions_on_every_edge(
    auth_stack, second_edge, http
):
    """Issue 8 item 6, through the real auth runner and two edge processes: two logins of
    one user; deleting the account from one session refuses the other's access and refresh
    tokens on the other edge; the name registered again is another subject, and the old
    session does not act as the new account."""
    name = f"u{secrets.token_hex(4)}"
    await register(http, auth_stack.url, name)
    first = await login(http, auth_stack.url, name)
    second = await login(http, second_edge, name)
    old_subject = (await identity(http, second_edge, second["access_token"]))["subject"]
    assert old_subject.startswith("u:") and old_subject != name
    async with http.post(
        f"{auth_stack.url}/api/auth/delete/auth/password", headers=bearer(first["access_token"])
    ) as resp:
        assert resp.status == 200, await resp.text()
    assert await status_on(http, second_edge, second["access_token"]) == 401
    status, _ = await refresh_on(http, second_edge, second["refresh_token"])
    assert status == 401
    assert await status_on(http, auth_stack.url, second["access_token"]) == 401

    await register(http, second_edge, name)
    new = await login(http, second_edge, name)
    new_identity = await identity(http, auth_stack.url, new["access_token"])
    assert new_identity["subject"] != old_subject
    assert new_identity["claims"]["name"] == name
    for url in (auth_stack.url, second_edge):
        assert await status_on(http, url, second["access_token"], within=0) == 401
        status, _ = await refresh_on(http, url, second["refresh_token"])
        assert status == 401


async def _backdate(bus_url: str, session_id: str, seconds: float) -> None:
    """Make a session older in the shared store, as the passing of time would."""
    import msgspec

    from busgate.bus.sessions import Session
    from busgate.bus.store import Store
    from busgate.bus.store.kafka import KafkaStore
    from busgate.bus.store.nats import NatsStore

    nc = None
    store: Store[Session]
    if bus_url.startswith("nats"):
        import nats

        nc = await nats.connect(bus_url)
        store = NatsStore(nc, "sessions", Session)
    else:
        store = KafkaStore(bus_url.split("://", 1)[1], "sessions", Session)
    await store.start()
    try:
        entry = await store.get(session_id)
        assert entry is not None
        aged = msgspec.structs.replace(entry.value, created=entry.value.created - seconds)
        assert await store.compare_and_set(session_id, aged, entry.revision) is not None
    finally:
        await store.close()
        if nc is not None:
            await nc.close()


async def test_refresh_past_the_session_max_age_is_refused(auth_stack, second_edge, http):
    """``tokens.main.session_max_age`` (30 days here): a session that started longer ago
    is refused at refresh, on any edge."""
    tokens = await login(http, auth_stack.url)
    marker = await login(http, auth_stack.url)
    status, tokens = await refresh_on(http, second_edge, tokens["refresh_token"])
    assert status == 200
    payload = jwt.decode(tokens["refresh_token"], options={"verify_signature": False})
    await _backdate(auth_stack.parts["bus"], payload["sid"], 30 * 86_400 + 1)
    # A barrier: a logout written after the backdating; once the second edge refuses that
    # token, its view holds the older record too (one ordered log / the bucket's reads).
    async with http.post(
        f"{auth_stack.url}/api/auth/logout/auth/password", headers=bearer(marker["access_token"])
    ) as resp:
        assert resp.status == 200
    assert await status_on(http, second_edge, marker["access_token"]) == 401
    for url in (auth_stack.url, second_edge):
        status, body = await refresh_on(http, url, tokens["refresh_token"])
        assert status == 401 and "maximum age" in body["error"]["message"]


@pytest.fixture(scope="module")
def generated_stack():
    # An empty BUSGATE_DEV_PASSWORD counts as unset: busgate dev makes one up.
    with dev_stack("nats", env={"BUSGATE_DEV_PASSWORD": ""}) as running:
        yield running


@pytest.mark.nats
async def test_a_generated_password_is_printed_once_and_works(generated_stack, http):
    shown = [line for line in generated_stack.output if "password:" in line]
    assert len(shown) == 1, generated_stack.output
    match = re.search(r"\(password: (\S+)\)", shown[0])
    assert match is not None
    password = match.group(1)
    assert len(password) >= 12
    async with http.post(
        f"{generated_stack.url}/api/auth/login/auth/password",
        json={"username": "admin", "password": password},
    ) as resp:
        assert resp.status == 200
        token = (await resp.json())["access_token"]
    async with http.get(
        f"{generated_stack.url}/api/request/secure/meta", headers=bearer(token)
    ) as resp:
        assert (await resp.json())["identity"]["roles"] == ["user", "admin"]


async def runner_calls(http, stack) -> list[dict]:
    async with http.get(f"{stack.runner}/calls") as resp:
        return await resp.json()


async def test_no_spelling_of_a_path_reaches_the_runner_as_another_path(auth_stack, http):
    """What the edge authorises is what the runner gets (issue 8, item 1): double-encoded
    dots are refused instead of becoming admin/meta (or leaving the system's base URL) after
    the adapter decoded the path a second time; safe oddities arrive exactly as checked."""
    url = auth_stack.url
    earlier = {c["requestId"] for c in await runner_calls(http, auth_stack)}  # other tests'
    headers = bearer((await login(http, url))["access_token"])  # role user, not admin
    refused = []
    for raw in (
        "secure/x/%252e%252e/admin/meta",
        "secure/x/%252E%252E/admin/meta",
        "secure/x/%c0%ae%c0%ae/admin/meta",
        "secure/x%252f%252e%252e%252fadmin/meta",
        "demo/%252e%252e/auth/login/password",
        "demo/x/%252e%252e/%252e%252e/calls",
    ):
        target = URL(f"{url}/api/request/{raw}", encoded=True)
        async with http.get(target, headers=headers) as resp:
            assert resp.status == 400, (raw, resp.status, await resp.text())
            assert (await resp.json())["error"]["code"] == "bad_request"
            refused.append(resp.headers["X-Request-Id"])
    for raw, path in (("a%3Fb", "a?b"), ("caf%C3%A9", "café"), ("a%23b/c", "a#b/c")):
        target = URL(f"{url}/api/request/demo/{raw}", encoded=True)
        async with http.get(target) as resp:
            assert resp.status == 404  # the runner's own: it has no such saga
            assert (await resp.json())["error"] == f"no saga {path!r}"
            seen = [
                c
                for c in await runner_calls(http, auth_stack)
                if c["requestId"] == resp.headers["X-Request-Id"]
            ]
        assert [c["saga"] for c in seen] == [path]
    calls = [c for c in await runner_calls(http, auth_stack) if c["requestId"] not in earlier]
    assert not [c for c in calls if c["requestId"] in refused]
    assert not [c for c in calls if c["saga"] in ("admin/meta", "login/password")]


async def test_stray_header_bytes_are_json_4xx_through_the_stack(auth_stack):
    """Issue 8, item 3, through the real edge process: non-UTF-8 header bytes are 400 (401
    for credentials) with the JSON error, not a 500 with a traceback."""
    port = URL(auth_stack.url).port
    assert port is not None
    bad = b"\xff\xfe\xc3("
    cases = [
        ("GET", "/api/request/demo/echo", b"User-Agent: " + bad, 400),
        ("GET", "/api/request/demo/echo", b"X-Forwarded-For: " + bad, 400),
        ("GET", "/api/stream/demo/count", b"Last-Event-ID: " + bad, 400),
        ("GET", "/api/request/secure/meta", b"Authorization: Bearer " + bad, 401),
        ("GET", "/api/request/secure/meta", b"X-Api-Key: " + bad, 401),
        ("GET", "/api/request/secure/meta", b"Cookie: busgate_access=" + bad, 401),
        ("POST", "/api/auth/login/auth/password", b"Authorization: Basic " + bad, 401),
    ]
    for method, path, line, status in cases:
        answer = await exchange(port, raw_request(method, path, line))
        assert answer.status == status, (line, answer.body)
        assert json.loads(answer.body)["error"]["requestId"] == answer.headers["x-request-id"]
    assert not [line for line in auth_stack.output if "Traceback" in line]


async def test_error_answers_have_ascii_heads_through_the_stack(auth_stack):
    """Issue 8, item 12: the refresh 401's WWW-Authenticate carried a raw '…'."""
    port = URL(auth_stack.url).port
    assert port is not None
    for raw in (
        raw_request("POST", "/api/auth/refresh/auth/password"),
        raw_request("GET", "/api/request/secure/meta", b"Authorization: Bearer caf\xc3\xa9"),
        raw_request("GET", "/api/request/secure/caf%C3%A9"),
        raw_request(
            "POST",
            "/api/auth/login/auth/password",
            b"Content-Type: application/json",
            body=b'{"username": 1}',
        ),
    ):
        answer = await exchange(port, raw)
        assert answer.status in (400, 401), answer.body
        assert answer.head.isascii(), answer.head
