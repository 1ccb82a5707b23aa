"""Headers a channel adds to its answers (``response_headers`` on the channel and on its path
rules), per method or for all; per header name the most specific wins: path and method, path,
channel and method, channel. They override a runner's header of the same name.

What a runner may send back at all is decided elsewhere: only the headers in
``edge.responses.PASS_HEADERS`` cross (``Set-Cookie``, ``Server``, ``Transfer-Encoding`` and
other hop-by-hop headers never do).
"""

from __future__ import annotations

from busgate.contracts.config import Channel, Config, ResponseHeaders
from busgate.edge.path_table import PathTable

Pairs = tuple[tuple[str, str], ...]
_CACHE = 1024
"""(path, method) answers kept per channel: most calls reuse a few paths."""


def _split(headers: ResponseHeaders) -> dict[str, Pairs]:
    """``{"*": all methods, "GET": GET only, …}``."""
    out: dict[str, Pairs] = {"*": tuple((k, v) for k, v in headers.items() if isinstance(v, str))}
    for method, table in headers.items():
        if isinstance(table, dict):
            out[method] = tuple(table.items())
    return out


class HeaderRules:
    def __init__(self, channel: Channel) -> None:
        self.channel = _split(channel.response_headers)
        self.paths = PathTable(
            (key, _split(rule.response_headers))
            for key, rule in channel.paths.items()
            if rule.response_headers
        )
        self._cache: dict[tuple[str, str], Pairs] = {}

    def for_call(self, path: str, method: str) -> Pairs:
        """The headers to set, least specific first (later ones replace earlier ones)."""
        found = self._cache.get((path, method))
        if found is None:
            rule = self.paths.lookup(path) or {}
            found = (
                self.channel["*"]
                + self.channel.get(method, ())
                + rule.get("*", ())
                + rule.get(method, ())
            )
            if len(self._cache) >= _CACHE:
                self._cache.clear()
            self._cache[(path, method)] = found
        return found


def compile_header_rules(config: Config) -> dict[str, HeaderRules]:
    """For the channels that add headers at all (the others pay one dict lookup)."""
    return {
        name: HeaderRules(channel)
        for name, channel in config.channels.items()
        if channel.response_headers or any(r.response_headers for r in channel.paths.values())
    }
