"""CRUD systems end to end: client → edge → bus → adapter → the shipped CRUD runner on SQLite
(``busgate dev``'s ``data`` channel) and on PostgreSQL, separate processes, over NATS and Kafka."""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from busgate.brokers import free_port, start_on_free_port
from tests.e2e.conftest import E2E_ENV
from tests.postgres import shared_postgres
from tests.sse_client import collect
from tests.stack import dev_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def blackhole() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def pg_runner() -> Iterator[str]:
    """``busgate runner crud`` on a real PostgreSQL server (started by the tests): its base."""
    argv = [sys.executable, "-m", "busgate", "runner", "crud", "--db", shared_postgres().url]
    port, proc = start_on_free_port(
        lambda port: subprocess.Popen([*argv, "--listen", f"127.0.0.1:{port}"])
    )
    try:
        yield f"http://127.0.0.1:{port}/api/data"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module", params=["nats", "kafka"])
def stack(request, blackhole, pg_runner):
    """The dev stack (its ``data`` channel on SQLite), plus ``pgdata`` on PostgreSQL, and
    CRUD systems whose runner is not running (``datadown``) or never answers (``datamute``,
    1 s timeout)."""
    request.applymarker(getattr(pytest.mark, request.param))
    env = {
        **E2E_ENV,
        "BUSGATE__SYSTEMS__PGDATA__TYPE": "crud",
        "BUSGATE__SYSTEMS__PGDATA__BASE_URL": pg_runner,
        "BUSGATE__CHANNELS__PGDATA__SYSTEM": "pgdata",
        "BUSGATE__SYSTEMS__DOWN__BASE_URL": f"http://127.0.0.1:{free_port()}/x",
        "BUSGATE__SYSTEMS__DATADOWN__TYPE": "crud",
        "BUSGATE__SYSTEMS__DATADOWN__BASE_URL": f"http://127.0.0.1:{free_port()}/api/data",
        "BUSGATE__CHANNELS__DATADOWN__SYSTEM": "datadown",
        "BUSGATE__SYSTEMS__DATAMUTE__TYPE": "crud",
        "BUSGATE__SYSTEMS__DATAMUTE__BASE_URL": f"http://127.0.0.1:{blackhole}/api/data",
        "BUSGATE__SYSTEMS__DATAMUTE__TIMEOUT": "1.0",
        "BUSGATE__CHANNELS__DATAMUTE__SYSTEM": "datamute",
    }
    with dev_stack(request.param, env=env) as running:
        yield running


@pytest.fixture(params=["data", "pgdata"], ids=["sqlite", "postgres"])
def state(stack, request) -> str:
    return f"{stack.url}/api/request/{request.param}/p{uuid.uuid4().hex[:10]}"


async def test_the_whole_lifecycle_through_the_gateway(stack, http, state):
    async with http.post(state, json={"name": "lamp"}) as resp:
        assert resp.status == 201
        doc = await resp.json()
        assert resp.headers["ETag"] == '"1"'
    id_ = doc["id"]
    assert doc == {"name": "lamp", "id": id_}  # the body went as is, not in "parameters"

    async with http.get(f"{state}/{id_}") as resp:
        assert resp.status == 200 and await resp.json() == doc
        etag = resp.headers["ETag"]

    async with http.put(f"{state}/{id_}", json={"name": "desk lamp"}, headers={"If-Match": etag}):
        pass
    # A second writer that read the same version is refused: If-Match crossed the bus.
    async with http.put(f"{state}/{id_}", json={"name": "x"}, headers={"If-Match": etag}) as resp:
        assert resp.status == 412
        assert (await resp.json())["error"]["code"] == "precondition_failed"

    async with http.patch(f"{state}/{id_}", json={"price": 9}) as resp:
        assert resp.status == 200
        assert await resp.json() == {"name": "desk lamp", "id": id_, "price": 9}
        assert resp.headers["ETag"] == '"3"'

    async with http.post(state, json={"id": id_}) as resp:
        assert resp.status == 409

    async with http.delete(f"{state}/{id_}") as resp:
        assert resp.status == 204
    async with http.get(f"{state}/{id_}") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "not_found"


async def test_lists_filter_and_page(stack, http, state):
    for i in range(5):
        async with http.post(state, json={"id": f"i{i}", "odd": i % 2 == 1}) as resp:
            assert resp.status == 201
    async with http.get(state, params={"limit": "2", "offset": "1"}) as resp:
        page = await resp.json()
    assert [d["id"] for d in page["items"]] == ["i1", "i2"]
    assert page["total"] == 5
    async with http.get(state, params={"odd": "true"}) as resp:
        assert [d["id"] for d in (await resp.json())["items"]] == ["i1", "i3"]


async def test_a_stream_pages_through_a_list(stack, http, state):
    for i in range(5):
        async with http.post(state, json={"id": f"i{i}"}) as resp:
            assert resp.status == 201
    url = state.replace("/api/request/", "/api/stream/") + "?limit=2"
    async with http.get(url) as resp:
        assert resp.status == 200
        got = await collect(resp)
    items = [e for e in got if e.kind == "message"]
    assert [e.data for e in items] == [f'{{"id":"i{i}"}}' for i in range(5)]
    assert got[-1].kind == "end"


async def test_a_bad_state_name_is_the_runners_400_not_a_5xx(stack, http):
    async with http.get(f"{stack.url}/api/request/data/1bad") as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "bad_state"


async def test_a_runner_that_is_down_answers_502_at_once(stack, http):
    async with http.get(f"{stack.url}/api/request/datadown/products") as resp:
        assert resp.status == 502
        error = (await resp.json())["error"]
        assert error["code"] == "upstream_unreachable" and error["requestId"]


async def test_a_runner_that_never_answers_is_a_504_at_its_timeout(stack, http):
    async with http.get(f"{stack.url}/api/request/datamute/products") as resp:
        assert resp.status == 504
        assert (await resp.json())["error"]["code"] == "deadline_exceeded"
