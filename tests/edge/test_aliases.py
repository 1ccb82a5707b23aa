"""Alias matching and expression compilation (unit); end to end in tests/e2e/test_shaping.py."""

from __future__ import annotations

import json

import pytest
from jmespath.exceptions import JMESPathError

from busgate.contracts.config import Config, ConfigError, parse
from busgate.edge.aliases import _search, compile_aliases
from busgate.edge.app import create_app
from busgate.edge.path_table import PathTable
from busgate.edge.response_headers import HeaderRules
from tests.raw_http import exchange
from tests.raw_http import request as raw_request


def config(aliases: dict, **channel) -> Config:
    return parse(
        {
            "systems": {"d": {"type": "rpc", "base_url": "http://127.0.0.1:9"}},
            "channels": {"c": {"system": "d", "aliases": aliases, **channel}},
        }
    )


def test_a_bad_expression_is_a_config_error_naming_its_key_path():
    bad = config({"v1/orders/{id}": {"target": "meta", "meta": {"region": "identity.["}}})
    with pytest.raises(
        ConfigError, match=r'channels\.c\.aliases\."v1/orders/\{id\}"\.meta\.region'
    ):
        create_app(bad)


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("v1/o/x{id}", "whole segment"),
        ("v1/{a}/{a}", "appears twice"),
        ("v1/*", "no wildcards"),
        ("v1/../x", "'..'"),
    ],
)
def test_bad_alias_keys_are_refused_at_load(key, why):
    with pytest.raises(ConfigError, match=r"channels\.c") as caught:
        config({key: {"target": "meta"}})
    assert why in str(caught.value)


def test_a_target_that_would_escape_is_refused_at_load():
    with pytest.raises(ConfigError, match=r'aliases\."a"\.target'):
        config({"a": {"target": "x/../admin"}})


def test_matching_prefers_literal_segments_and_takes_whole_segments():
    table = compile_aliases(
        config(
            {
                "v1/orders/{id}": {"target": "get"},
                "v1/orders/new": {"target": "new"},
                "v1/orders/{id}/lines/{line}": {"target": "line"},
            }
        )
    )["c"]
    assert table.match("v1/orders/new").target == "new"
    found = table.match("v1/orders/42")
    assert (found.target, found.params) == ("get", {"id": "42"})
    found = table.match("v1/orders/42/lines/3")
    assert (found.target, found.params) == ("line", {"id": "42", "line": "3"})
    assert table.match("v1/orders/42/x") is None
    assert table.match("v1/orders") is None


def test_header_names_are_written_as_sent_and_matched_in_lower_case():
    table = compile_aliases(
        config({"a": {"target": "t", "payload": {"tenant": "headers.X-Tenant"}}})
    )["c"]
    ((_, expression),) = table.exact["a"].payload
    assert expression.search({"headers": {"x-tenant": "acme"}}) == "acme"


def test_path_table_most_specific_wins():
    table = PathTable([("*", 0), ("a/*", 1), ("a/b/*", 2), ("a/b/c", 3)])
    assert [table.lookup(p) for p in ("x", "a", "a/x", "a/b/x", "a/b/c")] == [0, 1, 1, 2, 3]
    assert not PathTable([])


def test_response_headers_merge_by_specificity():
    channel = config(
        {},
        response_headers={"Cache-Control": "no-store", "X-A": "1", "GET": {"X-A": "2"}},
        paths={"p/*": {"response_headers": {"Cache-Control": "max-age=1", "GET": {"X-B": "3"}}}},
    ).channels["c"]
    rules = HeaderRules(channel)
    assert dict(rules.for_call("q", "GET")) == {"Cache-Control": "no-store", "X-A": "2"}
    assert dict(rules.for_call("p/x", "GET")) == {
        "Cache-Control": "max-age=1",
        "X-A": "2",
        "X-B": "3",
    }
    assert dict(rules.for_call("p/x", "POST")) == {"Cache-Control": "max-age=1", "X-A": "1"}


def test_response_headers_are_checked_at_load():
    with pytest.raises(ConfigError, match="not a header name"):
        config({}, response_headers={"Bad Name": "x"})
    with pytest.raises(ConfigError, match="only allowed under a method"):
        config({}, response_headers={"Nope": {"X": "y"}})


def test_an_expression_failing_on_client_input_gives_null_not_a_500():
    table = compile_aliases(
        config({"a": {"target": "t", "payload": {"n": "length(query.x)", "m": "abs(query.x)"}}})
    )["c"]
    (_, length), (_, absolute) = table.exact["a"].payload
    assert length.search({"query": {"x": "abc"}}) == 3
    with pytest.raises(JMESPathError):
        absolute.search({"query": {"x": "abc"}})
    assert _search(absolute, {"query": {"x": "abc"}}) is None


async def test_an_alias_call_whose_mapping_fails_on_its_input_is_answered(edge):
    cfg = parse(
        {
            "systems": {"demo": {"type": "rpc", "base_url": "http://127.0.0.1:9"}},
            "channels": {
                "demo": {
                    "system": "demo",
                    "aliases": {"v/{id}": {"target": "echo", "payload": {"n": "abs(query.x)"}}},
                }
            },
        }
    )
    client, _ = await edge(cfg)
    resp = await client.get("/api/request/demo/v/7?x=abc")
    assert resp.status == 200
    assert await resp.json() == {"x": "abc", "id": "7", "n": None}
    resp = await client.post("/api/request/demo/v/7", json=[1, 2])
    assert resp.status == 400  # mappings need an object to go into
    assert (await resp.json())["error"]["code"] == "bad_request"


async def test_an_alias_of_a_disabled_target_answers_404_like_any_unknown_path(edge):
    cfg = parse(
        {
            "systems": {"demo": {"type": "rpc", "base_url": "http://127.0.0.1:9"}},
            "channels": {
                "demo": {
                    "system": "demo",
                    "paths": {"internal/*": {"disabled": True}},
                    "aliases": {"open": {"target": "internal/echo"}, "fine": {"target": "echo"}},
                }
            },
        }
    )
    client, _ = await edge(cfg)
    resp = await client.post("/api/request/demo/open", json={"a": 1})
    assert resp.status == 404
    resp = await client.post("/api/request/demo/fine", json={"a": 1})
    assert resp.status == 200 and await resp.json() == {"a": 1}


async def test_stray_header_bytes_are_a_400_for_mappings_and_harmless_to_audit(edge):
    cfg = parse(
        {
            "systems": {"demo": {"type": "rpc", "base_url": "http://127.0.0.1:9"}},
            "channels": {
                "demo": {
                    "system": "demo",
                    "paths": {"*": {"audit": True}},
                    "aliases": {"v": {"target": "echo", "payload": {"t": "headers.X-Tenant"}}},
                }
            },
        }
    )
    client, _ = await edge(cfg)
    port = client.server.port
    bad = b"\xff\xfe\xc3("
    answer = await exchange(port, raw_request("GET", "/api/request/demo/v", b"X-Tenant: " + bad))
    assert answer.status == 400
    assert "X-Tenant" in json.loads(answer.body)["error"]["message"]
    refused = raw_request("GET", "/api/request/demo/echo", b"User-Agent: " + bad)
    answer = await exchange(port, refused)
    assert answer.status == 400  # as without audit; its event gets U+FFFD, not a 500
    assert json.loads(answer.body)["error"]["code"] == "bad_request"
