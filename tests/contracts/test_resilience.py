"""``resilience`` config: validated at load with key paths, resolved most specific first."""

from __future__ import annotations

import pytest

from busgate.contracts.config import ConfigError, parse
from busgate.contracts.resilience import NONE, resolve


def cfg(**channel):
    return {
        "systems": {"demo": {"type": "rpc", "base_url": "http://127.0.0.1:9"}},
        "channels": {"demo": {"system": "demo", **channel}},
    }


def test_path_overrides_channel_which_overrides_gateway():
    raw = cfg(
        resilience={"user": {"limit": 20, "period": 1}, "breaker": {}},
        paths={"reports/*": {"resilience": {"user": {"limit": 2, "period": 10}}}},
    )
    raw["gateway"] = {"rate_limit": {"ip": {"limit": 5, "period": 60}}}
    config = parse(raw)
    report = resolve(config, "demo", "reports/q1")
    assert (report.user.value.limit, report.user.scope) == (2, "demo/reports/*")
    assert report.breaker.scope == "demo"  # not set on the path: the channel's
    assert (report.ip.value.limit, report.ip.scope) == (5, "demo")
    other = resolve(config, "demo", "other")
    assert (other.user.value.limit, other.user.scope) == (20, "demo")


def test_nothing_configured_is_none():
    assert resolve(parse(cfg()), "demo", "x") is NONE
    assert resolve(parse(cfg()), "nope", "x") is NONE


@pytest.mark.parametrize(
    ("resilience", "where"),
    [
        ({"user": {"limit": -2}}, "channels.demo.resilience.user.limit"),
        ({"rate": {"limit": 5, "period": 0}}, "channels.demo.resilience.rate.period"),
        ({"bulkhead": {"max_concurrent": 0}}, "channels.demo.resilience.bulkhead"),
        ({"breaker": {"failure_rate": 150}}, "channels.demo.resilience.breaker.failure_rate"),
        ({"retry": {"methods": ["FETCH"]}}, "channels.demo.resilience.retry"),
        ({"retry": {"attemps": 3}}, "channels.demo.resilience.retry"),
    ],
)
def test_errors_name_their_key_path(resilience, where):
    with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
        parse(cfg(resilience=resilience))


def test_path_rule_errors_name_the_path_key():
    raw = cfg(paths={"a/*": {"resilience": {"ip": {"limit": "x"}}}})
    with pytest.raises(ConfigError, match=r'channels\.demo\.paths\."a/\*"\.resilience\.ip\.limit'):
        parse(raw)


def test_trusted_proxies_must_look_like_addresses():
    raw = cfg()
    raw["gateway"] = {"trusted_proxies": ["not an address"]}
    with pytest.raises(ConfigError, match=r"gateway\.trusted_proxies"):
        parse(raw)


def test_policy_empty_is_computed_once_at_construction() -> None:
    """The edge asks ``empty`` on every call: a stored field, not a property walking the parts
    each time; and right for each part."""
    import dataclasses

    from busgate.contracts.resilience import NONE, PARTS, Policy, Scoped

    assert "empty" in {f.name for f in dataclasses.fields(Policy)}
    assert NONE.empty and Policy().empty
    for part in PARTS:
        assert not Policy(**{part: Scoped(object(), "c")}).empty  # type: ignore[arg-type]
