"""Response formats through a real edge, bus, adapter and runner: CSV, XML, HTML and text
when ``Accept`` asks, JSON by default, 406 (before any runner call) when none fits."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any
from xml.etree import ElementTree as ET

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from busgate.contracts.config import parse
from busgate.edge.formats import to_csv, to_text
from tests.control.conftest import edge_and_adapter

ROWS = [{"id": 1, "name": "a,b"}, {"id": 2, "tags": ["x"], "name": "<c>"}]


@pytest.fixture
async def edge(nats_server: Any, runner_url: str) -> AsyncIterator[TestServer]:
    config = parse(
        {
            "gateway": {"id": "fm", "bus": nats_server.url, "prefix": f"fm{uuid.uuid4().hex[:6]}"},
            "systems": {"demo": {"type": "rpc", "base_url": f"{runner_url}/api/demo"}},
            "channels": {"demo": {"system": "demo"}},
        }
    )
    async with edge_and_adapter(config) as server:
        yield server


async def call(edge: TestServer, accept: str | None, body: Any = ROWS, path: str = "echo") -> Any:
    headers = {"Accept": accept} if accept else {}
    async with aiohttp.ClientSession() as http:
        url = edge.make_url(f"/api/request/demo/{path}")
        async with http.post(url, json=body, headers=headers) as resp:
            return resp.status, resp.content_type, await resp.text()


@pytest.mark.nats
async def test_formats_by_accept(edge: TestServer) -> None:
    status, ctype, text = await call(edge, "text/csv")
    assert (status, ctype) == (200, "text/csv")
    assert text == 'id,name,tags\r\n1,"a,b",\r\n2,<c>,"[""x""]"\r\n'

    status, ctype, text = await call(edge, "application/xml")
    assert (status, ctype) == (200, "application/xml")
    root = ET.fromstring(text)
    assert [i.findtext("name") for i in root.findall("item")] == ["a,b", "<c>"]

    status, ctype, text = await call(edge, "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8")
    assert (status, ctype) == (200, "text/html")
    assert "<td>&lt;c&gt;</td>" in text and "<th>tags</th>" in text

    status, ctype, text = await call(edge, "text/plain", body="hello")
    assert (status, ctype, text) == (200, "text/plain", "hello")

    status, ctype, text = await call(edge, None)
    assert (status, ctype) == (200, "application/json")
    status, ctype, _ = await call(edge, "text/csv;q=0.5, application/json")
    assert ctype == "application/json"


@pytest.mark.nats
async def test_406_and_errors_stay_json(edge: TestServer) -> None:
    status, ctype, text = await call(edge, "image/png")
    assert (status, ctype) == (406, "application/json")
    assert '"code":"not_acceptable"' in text
    status, ctype, _ = await call(edge, "text/csv", body={"status": 500}, path="fail")
    assert (status, ctype) == (502, "application/json")


def test_shapes() -> None:
    assert to_csv([1, 2]) == "value\r\n1\r\n2\r\n"
    assert to_csv({"a": 1}) == "a\r\n1\r\n"
    assert to_text([{"a": 1}, {"a": 2}]) == "a\n1\n2\n"


@pytest.mark.nats
async def test_path_extension_asks_and_is_not_sent(edge: TestServer, runner_url: str) -> None:
    status, ctype, text = await call(edge, None, path="echo.csv")
    assert (status, ctype) == (200, "text/csv")
    assert text.startswith("id,name,tags\r\n")
    status, ctype, _ = await call(edge, "application/json", path="echo.xml")
    assert (status, ctype) == (200, "application/xml")
    status, ctype, text = await call(edge, None, body="x", path="echo.txt")
    assert (status, ctype, text) == (200, "text/plain", "x")
    async with aiohttp.ClientSession() as http, http.get(f"{runner_url}/calls") as resp:
        sagas = {c["saga"] for c in await resp.json()}
    assert "echo.csv" not in sagas and "echo" in sagas
