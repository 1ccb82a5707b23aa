"""Path rules: the most specific key wins; roles per method; defaults per channel."""

import pytest

from busgate.contracts.config import Channel, ConfigError, PathRule, parse
from busgate.edge.access import ChannelAccess


def access(auth: str | None = "main", **paths: PathRule) -> ChannelAccess:
    return ChannelAccess(Channel(system="demo", auth=auth, paths=paths))


RULES = access(
    **{
        "*": PathRule(roles={"DELETE": ("admin",)}),
        "admin/*": PathRule(roles={"*": ("admin",)}),
        "admin/reports/*": PathRule(roles={"GET": ("auditor", "admin"), "*": ("admin",)}),
        "admin/ping": PathRule(public=True),
        "open/*": PathRule(public=True),
        "old/*": PathRule(disabled=True),
        "any/*": PathRule(roles={"*": ("*",)}),
    }
)


@pytest.mark.parametrize(
    ("path", "method", "public", "disabled", "roles"),
    [
        ("meta", "GET", False, False, None),
        ("meta", "DELETE", False, False, {"admin"}),
        ("admin", "GET", False, False, {"admin"}),  # the prefix itself is covered
        ("admin/x", "GET", False, False, {"admin"}),
        ("/admin//x", "GET", False, False, {"admin"}),
        ("administrator", "GET", False, False, None),  # not under admin/
        ("admin/reports/q1", "GET", False, False, {"auditor", "admin"}),
        ("admin/reports/q1", "POST", False, False, {"admin"}),
        ("admin/ping", "GET", True, False, None),  # exact beats prefix
        ("open/anything/deep", "POST", True, False, None),
        ("old/thing", "GET", False, True, None),
        ("any/x", "GET", False, False, None),  # "*" = any authenticated caller
    ],
)
def test_most_specific_rule_wins(path, method, public, disabled, roles):
    need = RULES.need(path, method)
    assert (need.public, need.disabled) == (public, disabled)
    assert need.roles == (frozenset(roles) if roles is not None else None)


def test_defaults_follow_the_channel():
    assert access().need("x", "GET") == access(**{}).need("y", "POST")
    assert not access().need("x", "GET").public  # with auth: authenticated by default
    open_channel = access(auth=None, **{"old/*": PathRule(disabled=True)})
    assert open_channel.need("x", "GET").public  # without auth: public
    assert open_channel.need("old/x", "GET").disabled  # but disabled still applies


def test_roles_need_a_token():
    with pytest.raises(ConfigError, match=r'channels\.c: paths\."\*"\.roles: set auth'):
        parse(
            {
                "systems": {"d": {"type": "rpc", "base_url": "http://x"}},
                "channels": {"c": {"system": "d", "paths": {"*": {"roles": {"*": ["a"]}}}}},
            }
        )
