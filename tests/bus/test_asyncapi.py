"""The AsyncAPI document of the bus (``busgate asyncapi``, ``/api/asyncapi.json``)."""

from __future__ import annotations

import json
import logging

import msgspec
import pytest

from busgate.bus.asyncapi import bus_document
from busgate.cli import main
from busgate.contracts.wire import Request
from busgate.runners.native import build


def payload(doc: dict, channel: str) -> dict:
    messages = doc["channels"][channel]["messages"]
    (ref,) = messages.values()
    name = ref["$ref"].rpartition("/")[2]
    return doc["components"]["messages"][name]["payload"]


@pytest.mark.parametrize("url", ["nats://user:secret@127.0.0.1:4222", "kafka://127.0.0.1:9092"])
def test_every_bus_channel_with_its_envelopes(url: str) -> None:
    doc = bus_document(url, "gw", {"orders": "bus", "demo": "rpc"})
    assert doc["asyncapi"] == "3.0.0"
    assert "secret" not in json.dumps(doc), "credentials of the bus URL are not published"
    assert payload(doc, "gw.req.orders") == {"$ref": "#/components/schemas/Request"}
    assert "gw.req.demo" in doc["channels"]
    control = payload(doc, "gw.control")["oneOf"]
    assert {r["$ref"].rpartition("/")[2] for r in control} == {"Presence", "Cancel"}
    schemas = doc["components"]["schemas"]
    # The payloads are the contracts' own schemas, not FastStream's bytes placeholders.
    _, expected = msgspec.json.schema_components(
        [Request], ref_template="#/components/schemas/{name}"
    )
    assert schemas["Request"] == expected["Request"]
    assert not [n for n in schemas if n.endswith(":Payload")]


def test_a_runner_documents_what_it_consumes() -> None:
    doc = build("native", bus="nats://127.0.0.1:4222").asyncapi()
    assert payload(doc, "busgate.req.native") == {"$ref": "#/components/schemas/Request"}
    assert "count" in doc["info"]["description"]


def test_cli_writes_the_document(tmp_path) -> None:
    out = tmp_path / "asyncapi.json"
    root = logging.getLogger()
    level, handlers = root.level, root.handlers[:]
    try:
        assert main(["asyncapi", "-o", str(out)]) == 0
    finally:  # main() sets up logging for its own process: not for the tests after this one
        root.handlers[:] = handlers
        root.setLevel(level)
    doc = json.loads(out.read_text())
    assert {"busgate.req.demo", "busgate.req.native", "busgate.control"} <= set(doc["channels"])
