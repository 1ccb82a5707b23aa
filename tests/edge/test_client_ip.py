"""Which address a limit counts (``edge.client_ip``): the peer, unless a trusted proxy
forwarded the call."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from busgate.edge.client_ip import client_ip, networks


def req(peer: str, **headers: str):
    request = make_mocked_request("GET", "/", headers=headers)
    return request.clone(remote=peer)


TRUSTED = networks(("10.0.0.0/8", "::1/128"))


def test_without_trusted_proxies_the_header_is_ignored():
    assert client_ip(req("203.0.113.5", **{"X-Forwarded-For": "1.2.3.4"}), ()) == "203.0.113.5"


def test_an_untrusted_peer_cannot_pick_its_ip():
    assert client_ip(req("203.0.113.5", **{"X-Forwarded-For": "1.2.3.4"}), TRUSTED) == (
        "203.0.113.5"
    )


def test_a_trusted_proxy_names_the_client():
    assert client_ip(req("10.1.2.3", **{"X-Forwarded-For": "198.51.100.7"}), TRUSTED) == (
        "198.51.100.7"
    )


def test_read_from_the_right_skipping_trusted_hops():
    """A client's own X-Forwarded-For entry (leftmost) is not believed."""
    value = "6.6.6.6, 198.51.100.7, 10.9.9.9"
    assert client_ip(req("10.1.2.3", **{"X-Forwarded-For": value}), TRUSTED) == "198.51.100.7"


def test_forwarded_header():
    value = 'for=198.51.100.7;proto=https, for="[2001:db8::1]:4711"'
    assert client_ip(req("::1", Forwarded=value), TRUSTED) == "2001:db8::1"


def test_garbage_falls_back_to_the_peer():
    assert client_ip(req("10.1.2.3", **{"X-Forwarded-For": "nonsense"}), TRUSTED) == "10.1.2.3"


def test_bad_cidr_is_named():
    with pytest.raises(ValueError, match=r"'10\.0\.0\.0/99'"):
        networks(("10.0.0.0/99",))
