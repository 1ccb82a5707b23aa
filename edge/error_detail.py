"""How much of an error a caller sees, per channel and path (``errors = "full" | "code" |
"none"``): the code and message, the code only, or the status only. What is hidden is logged
here (traces keep it as well), so operators lose nothing the caller does not get."""

from __future__ import annotations

from aiohttp import web

from busgate.contracts.config import Config, ErrorDetail
from busgate.edge.path_table import PathTable


class ErrorLevels:
    def __init__(self, config: Config) -> None:
        self.channels: dict[str, tuple[ErrorDetail, PathTable[ErrorDetail]]] = {}
        for name, channel in config.channels.items():
            paths = PathTable(
                (key, rule.errors) for key, rule in channel.paths.items() if rule.errors
            )
            if channel.errors != "full" or paths:
                self.channels[name] = (channel.errors, paths)

    def __bool__(self) -> bool:
        return bool(self.channels)

    def level(self, request: web.Request) -> ErrorDetail:
        """The level of the call's channel and (public) path; ``full`` outside channels."""
        info = request.match_info
        found = self.channels.get(info.get("channel", ""))
        if found is None:
            return "full"
        default, paths = found
        return paths.lookup(info.get("path", "")) or default
