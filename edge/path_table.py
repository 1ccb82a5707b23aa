"""The most specific of a channel's ``paths`` keys that sets something, for any setting.

Keys are ``*`` (every path), ``prefix/*`` (the prefix and everything below) or an exact path;
an exact key beats the longest prefix, which beats ``*`` -- as for access rules
(``edge.access``) and timeouts (``contracts.config.path_timeout``). Built once per setting
from only the keys that set it, so a lookup skips keys that say nothing about it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class PathTable(Generic[T]):
    def __init__(self, entries: Iterable[tuple[str, T]]) -> None:
        self.exact: dict[str, T] = {}
        self.default: T | None = None
        prefixes: list[tuple[str, T]] = []
        for key, value in entries:
            if key == "*":
                self.default = value
            elif key.endswith("/*"):
                prefixes.append((key[:-2].strip("/") + "/", value))
            else:
                self.exact[key.strip("/")] = value
        self.prefixes = sorted(prefixes, key=lambda p: len(p[0]), reverse=True)

    def __bool__(self) -> bool:
        return bool(self.exact or self.prefixes) or self.default is not None

    def lookup(self, path: str) -> T | None:
        path = path.strip("/")
        found = self.exact.get(path)
        if found is not None:
            return found
        for prefix, value in self.prefixes:  # each ends with "/"
            if path.startswith(prefix) or path == prefix[:-1]:
                return value
        return self.default
