"""Who may call which path of a channel: the ``[channels.NAME.paths]`` rules, compiled once.

A path key is ``*`` (every path), ``prefix/*`` (``prefix`` and everything below it) or an
exact path; the most specific one wins (exact, then the longest prefix, then ``*``). Without
a matching key, a channel with ``auth`` needs an authenticated caller and one without is
public. A disabled path answers 404, exactly like a path that does not exist, so that
probing cannot tell them apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from busgate.contracts.config import Channel, PathRule


@dataclass(frozen=True, slots=True)
class Need:
    """What a call needs: nothing (public), to be refused (disabled), or a caller with one
    of ``roles`` (None = any authenticated caller)."""

    public: bool = False
    disabled: bool = False
    roles: frozenset[str] | None = None


PUBLIC = Need(public=True)
DISABLED = Need(disabled=True)
AUTHENTICATED = Need()


def _needs(rule: PathRule, authenticated: bool) -> dict[str, Need]:
    """Per method (``*`` for the rest)."""
    if rule.disabled:
        return {"*": DISABLED}
    if rule.public or not authenticated:
        return {"*": PUBLIC}
    out: dict[str, Need] = {"*": AUTHENTICATED}
    for method, roles in rule.roles.items():
        wanted = frozenset(r for r in roles if r != "*")
        out[method] = Need(roles=wanted) if wanted and "*" not in roles else AUTHENTICATED
    return out


class ChannelAccess:
    def __init__(self, channel: Channel) -> None:
        authenticated = channel.auth is not None
        self.default = {"*": AUTHENTICATED if authenticated else PUBLIC}
        self.exact: dict[str, dict[str, Need]] = {}
        prefixes: list[tuple[str, dict[str, Need]]] = []
        for key, rule in channel.paths.items():
            needs = _needs(rule, authenticated)
            if key == "*":
                self.default = needs
            elif key.endswith("/*"):
                prefixes.append((key[:-2].strip("/") + "/", needs))
            else:
                self.exact[key.strip("/")] = needs
        self.prefixes = sorted(prefixes, key=lambda p: len(p[0]), reverse=True)

    def rule(self, path: str) -> dict[str, Need]:
        path = path.strip("/")
        found = self.exact.get(path)
        if found is not None:
            return found
        for prefix, needs in self.prefixes:  # each ends with "/"
            if path.startswith(prefix) or path == prefix[:-1]:
                return needs
        return self.default

    def need(self, path: str, method: str) -> Need:
        needs = self.rule(path)
        return needs.get(method) or needs["*"]
