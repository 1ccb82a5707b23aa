"""The CRUD runner over HTTP on a real database: SQLite in a temporary folder and a real
PostgreSQL server (``tests.postgres``), the same scenarios on both."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from busgate.runners.crud import create_app
from busgate.runners.crud_store import PostgresStore, SqliteStore, open_store
from tests.postgres import shared_postgres

DATABASES = ["sqlite", pytest.param("postgres", id="postgres")]


@pytest.fixture(params=DATABASES)
async def client(request, tmp_path) -> AsyncIterator[TestClient]:
    # tmp_path is absolute, so the SQLite URL has four slashes (sqlite:////tmp/…).
    db = f"sqlite:///{tmp_path}/data.db" if request.param == "sqlite" else shared_postgres().url
    async with TestClient(TestServer(create_app(db))) as http:
        yield http


@pytest.fixture
def base() -> str:
    """A state of its own per test: the PostgreSQL server is shared by the session."""
    return f"/api/data/s{uuid.uuid4().hex[:12]}"


async def test_lifecycle_create_read_replace_merge_delete(client, base):
    resp = await client.post(base, json={"name": "lamp", "tags": {"a": 1, "b": 2}})
    assert resp.status == 201
    created = await resp.json()
    id_ = created["id"]
    assert len(id_) == 32 and created["name"] == "lamp"
    assert resp.headers["ETag"] == '"1"'

    resp = await client.get(f"{base}/{id_}")
    assert resp.status == 200 and (await resp.json()) == created
    assert resp.headers["ETag"] == '"1"'

    resp = await client.put(f"{base}/{id_}", json={"name": "desk lamp"})
    assert resp.status == 200
    assert await resp.json() == {"name": "desk lamp", "id": id_}
    assert resp.headers["ETag"] == '"2"'

    resp = await client.patch(f"{base}/{id_}", json={"price": 12.5, "name": None, "tags": {"a": 3}})
    assert resp.status == 200
    assert await resp.json() == {"id": id_, "price": 12.5, "tags": {"a": 3}}
    assert resp.headers["ETag"] == '"3"'

    resp = await client.delete(f"{base}/{id_}")
    assert resp.status == 204
    for method in ("GET", "PUT", "PATCH", "DELETE"):
        resp = await client.request(method, f"{base}/{id_}", json={})
        assert resp.status == 404, method
        assert (await resp.json())["error"]["code"] == "not_found"


async def test_a_given_id_is_kept_and_a_second_create_conflicts(client, base):
    resp = await client.post(base, json={"id": "p1", "name": "lamp"})
    assert resp.status == 201 and (await resp.json())["id"] == "p1"
    resp = await client.post(base, json={"id": "p1", "name": "other"})
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "conflict"
    resp = await client.post(f"{base}/p1", json={"name": "again"})
    assert resp.status == 409
    resp = await client.get(f"{base}/p1")
    assert (await resp.json())["name"] == "lamp"  # the first one stays


async def test_if_match_makes_the_second_of_two_writers_fail(client, base):
    id_ = (await (await client.post(base, json={"n": 0})).json())["id"]
    read = (await client.get(f"{base}/{id_}")).headers["ETag"]
    first = await client.put(f"{base}/{id_}", json={"n": 1}, headers={"If-Match": read})
    assert first.status == 200 and first.headers["ETag"] == '"2"'
    second = await client.put(f"{base}/{id_}", json={"n": 2}, headers={"If-Match": read})
    assert second.status == 412
    assert (await second.json())["error"]["code"] == "precondition_failed"
    patch = await client.patch(f"{base}/{id_}", json={"n": 3}, headers={"If-Match": read})
    assert patch.status == 412
    delete = await client.delete(f"{base}/{id_}", headers={"If-Match": read})
    assert delete.status == 412
    assert (await (await client.get(f"{base}/{id_}")).json())["n"] == 1
    ok = await client.delete(f"{base}/{id_}", headers={"If-Match": '"2"'})
    assert ok.status == 204


async def test_concurrent_patches_without_if_match_all_land(client, base):
    """Read-merge-write is a compare-and-set: no field set by one PATCH is lost to another."""
    id_ = (await (await client.post(base, json={})).json())["id"]
    answers = await asyncio.gather(
        *(client.patch(f"{base}/{id_}", json={f"f{i}": i}) for i in range(8))
    )
    assert all(a.status == 200 for a in answers)
    resp = await client.get(f"{base}/{id_}")
    doc = await resp.json()
    assert {k: v for k, v in doc.items() if k != "id"} == {f"f{i}": i for i in range(8)}
    assert resp.headers["ETag"] == '"9"'


async def test_list_filters_and_pages_in_creation_order(client, base):
    for i in range(7):
        await client.post(base, json={"id": f"i{i}", "n": i, "even": i % 2 == 0, "k": "x"})
    resp = await client.get(base, params={"limit": "3", "offset": "2"})
    page = await resp.json()
    assert [d["id"] for d in page["items"]] == ["i2", "i3", "i4"]
    assert (page["total"], page["limit"], page["offset"]) == (7, 3, 2)
    resp = await client.get(base, params={"even": "true", "k": "x"})
    assert [d["id"] for d in (await resp.json())["items"]] == ["i0", "i2", "i4", "i6"]
    resp = await client.get(base, params={"n": "5"})
    assert [d["id"] for d in (await resp.json())["items"]] == ["i5"]
    resp = await client.get(base, params={"offset": "7"})
    assert (await resp.json())["items"] == []


@pytest.mark.parametrize(
    ("method", "path", "body", "code"),
    [
        ("POST", "", b"[1, 2]", "bad_body"),
        ("POST", "", b"{not json", "bad_body"),
        ("PUT", "", b"{}", "method_not_allowed"),
        ("GET", "?limit=-1", None, "bad_query"),
        ("GET", "?x%22y=1", None, "bad_query"),
    ],
)
async def test_bad_input_is_a_4xx_with_a_json_error(client, base, method, path, body, code):
    resp = await client.request(
        method, base + path, data=body, headers={"Content-Type": "application/json"}
    )
    assert 400 <= resp.status < 500
    assert (await resp.json())["error"]["code"] == code


async def test_a_bad_state_name_is_refused(client):
    resp = await client.get("/api/data/x;drop")
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "bad_state"


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///data.db", "data.db"),
        ("sqlite:////var/lib/data.db", "/var/lib/data.db"),
        ("sqlite://:memory:", ":memory:"),
        ("plain.db", "plain.db"),
    ],
)
def test_sqlite_urls(url, path):
    store = open_store(url)
    assert isinstance(store, SqliteStore) and store.path == path


def test_postgres_urls_and_unknown_schemes():
    assert isinstance(open_store("postgresql://u@h/db"), PostgresStore)
    with pytest.raises(ValueError, match="--db"):
        open_store("mysql://u@h/db")


async def test_a_value_the_database_refuses_is_a_400_not_a_500(client, base):
    """PostgreSQL takes no NUL in JSONB text; SQLite does. Either way no 500."""
    nul = {"Content-Type": "application/json"}
    resp = await client.post(base, data=b'{"id": "n", "name": "a\\u0000b"}', headers=nul)
    assert resp.status in (201, 400)
    if resp.status == 400:
        assert (await resp.json())["error"]["code"] == "bad_value"
    resp = await client.get(base, params={"name": "a\x00b"})
    assert resp.status in (200, 400)
    resp = await client.put(f"{base}/n", data=b'{"name": "\\u0000"}', headers=nul)
    assert resp.status in (200, 400, 404)
