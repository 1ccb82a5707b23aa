"""Schemas runners contribute, merged into ``/api/openapi.json`` on both buses: the adapter
fetches a runner's ``schema_url`` or reads a ``schema`` file and shares it in the bus's store
(``adapters.schemas``); the edge merges each per saga path, component schemas named per
system (``edge.contributed``); a broken one is skipped with a log line and the document stays
valid OpenAPI 3.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from openapi_spec_validator import validate

from busgate.adapters.service import AdapterService
from busgate.contracts.config import Config, loads
from busgate.edge import keys
from busgate.edge.app import create_app
from tests.control.conftest import TRANSPORTS

OTHER = {
    "paths": {
        "/sleep": {
            "post": {
                "requestBody": {
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Sleep"}}
                    }
                },
            }
        },
        "/echo": {
            "get": {
                "responses": {
                    "200": {
                        "description": "What was sent",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                }
            }
        },
    },
    "components": {"schemas": {"Sleep": {"type": "object", "required": ["other"]}}},
}
BROKEN = {  # "type": 5 is no JSON Schema
    "paths": {
        "/x": {"post": {"requestBody": {"content": {"application/json": {"schema": {"type": 5}}}}}}
    }
}
DANGLING = {  # a reference to a component it does not define
    "paths": {
        "/x": {
            "post": {
                "requestBody": {
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Nope"}}
                    }
                }
            }
        }
    }
}


def config(bus: str, prefix: str, runner: str, files: dict[str, Path]) -> Config:
    systems = "\n".join(
        f'[systems.{name}]\ntype = "rpc"\nbase_url = "{runner}/api/demo"\nschema = "{path}"\n'
        for name, path in files.items()
    )
    channels = "\n".join(f'[channels.{name}]\nsystem = "{name}"\n' for name in files)
    return loads(
        f"""
[gateway]
id = "oc"
bus = "{bus}"
prefix = "{prefix}"

[systems.demo]
type = "rpc"
base_url = "{runner}/api/demo"
schema_url = "/api/demo/openapi.json"

[channels.demo]
system = "demo"

[channels.secure]
system = "demo"
methods = ["GET", "POST"]
paths = {{ "blob" = {{ disabled = true }} }}

{systems}
{channels}
[channels.other.paths."sleep".response_headers]
Cache-Control = "no-store"
""",
        env={},
    )


@contextlib.asynccontextmanager
async def stack(config: Config) -> AsyncIterator[TestServer]:
    adapter = AdapterService(config)
    await adapter.start()
    edge = TestServer(create_app(config), host="127.0.0.1")
    try:
        await edge.start_server()
        yield edge
    finally:
        await edge.close()
        await adapter.stop()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_runner_schemas_are_merged_per_system(
    transport: str,
    bus_url: str,
    runner_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    files = {}
    for name, doc in (("other", OTHER), ("broken", BROKEN), ("dangling", DANGLING)):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(doc))
    prefix = f"oc{uuid.uuid4().hex[:6]}"
    caplog.set_level(logging.WARNING, "busgate.edge.openapi")
    async with stack(config(bus_url, prefix, runner_url, files)) as edge:
        api = edge.app[keys.OPENAPI]
        async with asyncio.timeout(30):
            await api.ready.wait()
            store = api.store
            assert store is not None
            await store.wait_until(lambda: {e.key for e in store.items()} >= {"demo", *files})
        async with aiohttp.ClientSession() as http:
            async with http.get(edge.make_url("/api/openapi.json")) as resp:
                assert resp.status == 200
                doc: dict[str, Any] = await resp.json()
    validate(doc)  # what was merged keeps the document valid OpenAPI 3.1
    schemas = doc["components"]["schemas"]
    paths = doc["paths"]
    # The runner's own document (schema_url), per channel of its system.
    sleep = paths["/api/request/demo/sleep"]["post"]
    body = sleep["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/demo.Sleep"}
    answer = sleep["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/demo.Slept"}
    assert schemas["demo.Sleep"]["properties"]["ms"]["maximum"] == 50
    assert "get" not in paths["/api/request/demo/sleep"]  # the runner documents POST only
    assert "/api/request/secure/sleep" in paths
    assert "/api/request/secure/blob" not in paths  # disabled on that channel
    # A second system's component of the same name is its own.
    assert schemas["other.Sleep"]["required"] == ["other"]
    other = paths["/api/request/other/sleep"]["post"]  # a path of the config: merged into
    assert other["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/other.Sleep"
    }
    echo = paths["/api/request/other/echo"]["get"]["responses"]["200"]["content"]
    assert echo["application/json"]["schema"] == {"type": "object"}
    # The broken ones are skipped whole, each with a log line; the gateway's own stay.
    assert not any(
        p.startswith(("/api/request/broken/x", "/api/request/dangling/x")) for p in paths
    )
    assert "Error" in schemas and "/api/request/broken/{path}" in paths
    logged = [r.getMessage() for r in caplog.records]
    assert any("broken: contributed schema skipped" in m and "JSON Schema" in m for m in logged)
    assert any("dangling: contributed schema skipped" in m and "Nope" in m for m in logged)
