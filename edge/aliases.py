"""Channel aliases: a public path (``v1/orders/{id}``) that calls another path of the channel,
with path parameters and JMESPath mappings put into the payload or the runner's ``meta``.

Expressions are compiled once, when the edge app is built; a bad one is a ConfigError naming
its key path. (They compile here, not in ``contracts.config``, because ``contracts`` imports
msgspec only; the edge is the one process that evaluates them.) ``headers.X-Tenant`` is
accepted as written: header names are matched in lower case, and a dotted name with a hyphen
(not an identifier in JMESPath) is quoted for the author.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import jmespath
import msgspec
from aiohttp import web
from jmespath.exceptions import JMESPathError
from jmespath.parser import ParsedResult

from busgate.contracts import errors
from busgate.contracts.codec import json_decode, json_encode
from busgate.contracts.config import Alias, Config, ConfigError
from busgate.contracts.wire import Identity
from busgate.edge.headers import checked

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_HEADER_REF = re.compile(r'\bheaders\.(?:"([^"]+)"|([A-Za-z0-9_-]+))')

Mapped = tuple[tuple[str, ParsedResult], ...]


def _header_ref(m: re.Match[str]) -> str:
    name = (m.group(1) or m.group(2)).lower()
    return f'headers."{name}"'


def compile_expression(text: str, where: str) -> ParsedResult:
    try:
        return jmespath.compile(_HEADER_REF.sub(_header_ref, text))
    except JMESPathError as exc:
        message = str(exc).replace("\n", " ")
        raise ConfigError(f"{where}: not a valid expression: {message}") from None


@dataclass(frozen=True, slots=True)
class CompiledAlias:
    key: str
    target: str
    methods: frozenset[str]
    payload: Mapped
    meta: Mapped
    pattern: re.Pattern[str] | None


@dataclass(frozen=True, slots=True)
class AliasMatch:
    """An alias path that matched: the path to call and its parameters."""

    alias: CompiledAlias
    target: str
    params: dict[str, str]


class ChannelAliases:
    def __init__(self, channel: str, aliases: dict[str, Alias]) -> None:
        self.exact: dict[str, CompiledAlias] = {}
        patterns: list[CompiledAlias] = []
        for key, alias in aliases.items():
            where = f'channels.{channel}.aliases."{key}"'
            compiled = CompiledAlias(
                key=key,
                target=alias.target,
                methods=frozenset(alias.methods),
                payload=_mapped(alias.payload, f"{where}.payload"),
                meta=_mapped(alias.meta, f"{where}.meta"),
                pattern=_pattern(key),
            )
            if compiled.pattern is None:
                self.exact[key.strip("/")] = compiled
            else:
                patterns.append(compiled)
        # More literal text first: "v1/orders/new" beats "v1/orders/{id}".
        self.patterns = sorted(patterns, key=lambda a: len(_PARAM.sub("", a.key)), reverse=True)

    def match(self, path: str) -> AliasMatch | None:
        path = path.strip("/")
        exact = self.exact.get(path)
        if exact is not None:
            return AliasMatch(exact, exact.target, {})
        for alias in self.patterns:
            assert alias.pattern is not None
            m = alias.pattern.fullmatch(path)
            if m is not None:
                return AliasMatch(alias, alias.target, m.groupdict())
        return None


def _mapped(table: dict[str, str], where: str) -> Mapped:
    return tuple((key, compile_expression(text, f"{where}.{key}")) for key, text in table.items())


def _pattern(key: str) -> re.Pattern[str] | None:
    key = key.strip("/")
    if not _PARAM.search(key):
        return None
    parts = [
        f"(?P<{m.group(1)}>[^/]+)" if (m := _PARAM.fullmatch(s)) else re.escape(s)
        for s in key.split("/")
    ]
    return re.compile("/".join(parts))


def compile_aliases(config: Config) -> dict[str, ChannelAliases]:
    """The channels that have aliases; raises ConfigError for a bad expression."""
    return {
        name: ChannelAliases(name, channel.aliases)
        for name, channel in config.channels.items()
        if channel.aliases
    }


def _context(request: web.Request, found: AliasMatch, identity: Identity | None) -> dict[str, Any]:
    return {
        "headers": {k.lower(): checked(k, v) for k, v in request.headers.items()},
        "query": {k: request.query.get(k) for k in request.query},
        "path": found.params,
        "identity": msgspec.to_builtins(identity) if identity is not None else None,
        "origin": {"client_ip": request.remote or ""},
    }


def _search(expression: ParsedResult, context: dict[str, Any]) -> Any:
    """The expression's value; None when the client's input makes a function fail (a
    ``length()`` of a number): client input never turns into a 500."""
    try:
        return expression.search(context)
    except JMESPathError:
        return None


def apply(
    request: web.Request, found: AliasMatch, body: bytes, identity: Identity | None
) -> tuple[bytes, dict[str, Any]]:
    """(payload, meta) of an alias call: the client's JSON object with the path parameters
    and the mapped values set over it, and the mapped ``meta`` keys."""
    alias = found.alias
    if not found.params and not alias.payload and not alias.meta:
        return body, {}
    context = _context(request, found, identity) if alias.payload or alias.meta else {}
    meta = {key: _search(expr, context) for key, expr in alias.meta}
    if not found.params and not alias.payload:
        return body, meta
    payload = json_decode(body) if body else {}
    if not isinstance(payload, dict):
        raise errors.BadRequest("the body of this path must be a JSON object")
    payload.update(found.params)
    for key, expr in alias.payload:
        payload[key] = _search(expr, context)
    return json_encode(payload), meta
