"""``/api/openapi.json`` from the live config (the shipped dev config), valid OpenAPI 3.1,
following a refresh; ``/api/docs`` rendered by headless Chromium from the edge's own assets."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp.test_utils import TestServer
from openapi_spec_validator import validate

from busgate.cli import DEV_CONFIG
from busgate.contracts.config import Channel, Config, load
from busgate.edge import keys
from busgate.edge.app import create_app
from tests.edge.chromium import chromium, ensure_chromium


@pytest.fixture
async def dev_edge(nats_server: Any, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TestServer]:
    monkeypatch.setenv("BUSGATE_TOKEN_SECRET", "t" * 64)
    config = load(DEV_CONFIG, env={"BUSGATE__GATEWAY__BUS": nats_server.url})
    config = msgspec.structs.replace(
        config, telemetry=msgspec.structs.replace(config.telemetry, sampling=0.0, metrics=False)
    )
    server = TestServer(create_app(config), host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


async def spec(server: TestServer) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(server.make_url("/api/openapi.json")) as r:
        assert r.status == 200
        return dict(await r.json())


@pytest.mark.nats
async def test_document_is_valid_openapi_31_from_the_live_config(dev_edge: TestServer) -> None:
    doc = await spec(dev_edge)
    validate(doc)  # raises on any violation of the 3.1 schema
    assert doc["openapi"] == "3.1.0"
    paths = doc["paths"]
    assert "/api/request/demo/{path}" in paths
    assert "/api/request/auth/{path}" not in paths  # disabled: not documented
    admin = paths["/api/request/secure/admin/{path}"]["post"]
    assert admin["x-busgate-roles"] == ["admin"]
    assert {"main": []} in admin["security"]
    assert paths["/api/request/demo/{path}"]["get"]["security"] == []  # public
    stream = paths["/api/stream/demo/{path}"]["get"]["responses"]["200"]["content"]
    assert list(stream) == ["text/event-stream"]
    # Each event is an object (event, data, id, retry), as schemathesis reads SSE under 3.1.
    assert set(stream["text/event-stream"]["schema"]["properties"]) >= {"event", "data", "id"}
    assert "/api/auth/{action}/{channel}/{type}" in paths
    assert "/api/command/{path}" in paths
    assert "/api/send/{service}/{topic}/{key}" in paths
    assert "/api/track/{channel}/{path}" in paths
    assert "/api/request/full/{channel}/{path}" in paths
    uploads = paths["/api/file/uploads/{path}"]  # the dev config's file service
    assert set(uploads) == {"get", "post", "delete"}
    assert {"206", "304", "416", "503"} <= set(uploads["get"]["responses"])
    assert {"main": []} in uploads["get"]["security"]
    upload = paths["/api/file/uploads"]["post"]
    assert {"201", "413"} <= set(upload["responses"])
    assert "multipart/form-data" in upload["requestBody"]["content"]
    answers = paths["/api/request/demo/{path}"]["get"]["responses"]
    assert {"text/csv", "application/xml"} <= set(answers["200"]["content"]) and "406" in answers
    schemes = doc["components"]["securitySchemes"]
    assert schemes["main"]["scheme"] == "bearer"
    assert schemes["main_api_key"] == {"type": "apiKey", "in": "header", "name": "X-Api-Key"}
    err = paths["/api/request/secure/{path}"]["post"]["responses"]["403"]
    assert err["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}

    # A refresh that adds a channel shows in the next document.
    live = dev_edge.app[keys.LIVE]
    channels = {**live.config.channels, "added": Channel(system="demo")}
    await live.apply(dev_edge.app, _with(live.config, channels=channels))
    doc = await spec(dev_edge)
    validate(doc)
    assert "/api/request/added/{path}" in doc["paths"]


def _with(config: Config, **changes: Any) -> Config:
    return msgspec.structs.replace(config, **changes)


@pytest.mark.nats
async def test_errors_are_documented_as_the_error_detail_shows_them(dev_edge: TestServer) -> None:
    """``errors = "none"`` answers a bare status and ``"code"`` leaves out the message: the
    document says so (schemathesis found a 400 without a body contradicting it)."""
    doc = await spec(dev_edge)
    validate(doc)
    paths = doc["paths"]
    quiet = paths["/api/request/shaped/quiet/{path}"]["put"]["responses"]
    assert "content" not in quiet["400"] and "content" not in quiet["503"]
    coded = paths["/api/request/shaped/{path}"]["put"]["responses"]
    assert coded["503"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorCode"
    }
    assert doc["components"]["schemas"]["ErrorCode"]["properties"]["error"]["required"] == ["code"]
    full = paths["/api/request/demo/{path}"]["put"]["responses"]["503"]
    assert full["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    # What the edge answers there is what the document says: a bare 400, a code without message.
    async with aiohttp.ClientSession() as http:
        url = dev_edge.make_url("/api/request/shaped/quiet/x")
        async with http.put(url, data=b"[", headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400 and await r.read() == b""
        url = dev_edge.make_url("/api/request/shaped/x")
        async with http.put(url, data=b"[", headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400
            error = (await r.json())["error"]
            assert error["code"] and "message" not in error


@pytest.mark.nats
async def test_docs_assets_are_local(dev_edge: TestServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(dev_edge.make_url("/api/docs")) as r:
            page = await r.text()
        assert r.status == 200 and "https://" not in page and "http://" not in page
        async with http.get(dev_edge.make_url("/api/docs/assets/swagger-ui-bundle.js")) as r:
            assert r.status == 200 and len(await r.read()) > 100_000
        async with http.get(dev_edge.make_url("/api/docs/assets/..%2Fcore.py")) as r:
            assert r.status == 404
            assert (await r.json())["error"]["code"] == "not_found"


LISTED = """document.addEventListener('DOMContentLoaded', () => {
  const names = () => [...document.querySelectorAll('.opblock-tag')].map((e) => e.dataset.tag);
  new MutationObserver((_, obs) => {
    if (names().length > 0) { obs.disconnect(); report(JSON.stringify(names())); }
  }).observe(document.body, {childList: true, subtree: true});
});"""
"""Runs in the docs page before its own scripts: reports the operation groups (one per
channel) once Swagger UI has rendered them."""


@pytest.mark.nats
async def test_chromium_renders_the_docs_with_the_channels(dev_edge: TestServer) -> None:
    async with chromium(ensure_chromium()) as page:
        await page.send("Page.enable")
        await page.send("Page.addScriptToEvaluateOnNewDocument", source=LISTED)
        await page.send("Page.navigate", url=str(dev_edge.make_url("/api/docs")))
        async with asyncio.timeout(60):
            tags = await page.report()
        shot = await page.send("Page.captureScreenshot", format="png")
    assert {"demo", "secure"} <= set(tags), tags
    assert base64.b64decode(shot["data"])[:8] == b"\x89PNG\r\n\x1a\n"
