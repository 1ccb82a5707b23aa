"""An in-memory bus for fast unit tests of edge logic (never the only proof: see tests/e2e)."""

from __future__ import annotations

from busgate.bus.base import Bus
from busgate.contracts.errors import BusUnavailable, NoResponders


class MemoryBus(Bus):
    requires_presence = False

    def __init__(self, node: str = "mem") -> None:
        super().__init__(node=node)
        self.up = True
        self.sent: list[tuple[str, bytes, dict[str, str]]] = []
        self.commands: list[tuple[str, bytes]] = []

    async def connect(self) -> None:
        pass

    async def _close_transport(self) -> None:
        pass

    @property
    def connected(self) -> bool:
        return self.up

    def reply_address(self, request_id: str) -> str:
        return f"{self.names.reply(self.node)}.{request_id}"

    async def _send(self, dest: str, data: bytes, headers: dict[str, str], *, reply: str = ""):
        if not self.up:
            raise BusUnavailable("down")
        self.sent.append((dest, data, headers))
        if dest.startswith(self.names.prefix + ".req."):
            if dest.rsplit(".", 1)[1] not in self._served:
                self.pending.fail(reply.rsplit(".", 1)[1], NoResponders("no adapter"))
                return
            self._on_request(data)
        elif dest.startswith(self.names.reply(self.node)):
            self._on_reply(data)
        elif dest == self.names.control:
            self._on_control(data)

    async def publish_command(self, name: str, data: bytes, headers=None) -> None:
        self.commands.append((name, data))

    async def _listen_requests(self, system: str) -> None:
        pass

    async def _stop_requests(self) -> None:
        pass
