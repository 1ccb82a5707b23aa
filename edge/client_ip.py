"""The client's IP, for per-IP limits and the login protection.

The socket's peer is the client, unless that peer is one of ``gateway.trusted_proxies``:
then ``Forwarded`` (``for=``) or ``X-Forwarded-For`` is read from the right, skipping the
trusted proxies, and the first address not trusted is the client. Anything else a client
writes in those headers is ignored, so it cannot pick its own IP to dodge a limit.
"""

from __future__ import annotations

import ipaddress
import re

from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_FOR = re.compile(r'for="?\[?([^\]";,]+)', re.IGNORECASE)


def networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    """Parsed ``trusted_proxies``; a bad entry raises ValueError naming it."""
    out = []
    for cidr in cidrs:
        try:
            out.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            raise ValueError(f"gateway.trusted_proxies: {cidr!r} is not a CIDR") from None
    return tuple(out)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip().strip('"')
    if text.startswith("["):  # [v6]:port
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _trusted(addr: object, trusted: tuple[Network, ...]) -> bool:
    return any(addr in net for net in trusted)


def _hops(request: web.Request) -> list[str]:
    """The addresses the proxies appended, leftmost first."""
    forwarded = request.headers.getall("Forwarded", [])
    if forwarded:
        return _FOR.findall(",".join(forwarded))
    return [h for v in request.headers.getall("X-Forwarded-For", []) for h in v.split(",")]


def client_ip(request: web.Request, trusted: tuple[Network, ...]) -> str:
    peer = request.remote or ""
    if not trusted:
        return peer
    addr = _address(peer)
    if addr is None or not _trusted(addr, trusted):
        return peer
    for hop in reversed(_hops(request)):
        hop_addr = _address(hop)
        if hop_addr is None:
            return peer  # garbage from beyond the proxies: the last proxy is what we know
        if not _trusted(hop_addr, trusted):
            return str(hop_addr)
    return peer
