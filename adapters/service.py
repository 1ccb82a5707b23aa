"""One adapter process: serves some systems, dispatches each request to its system's client."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import signal
from typing import Protocol

from busgate import bus as bus_
from busgate.adapters.commands import CommandWorker
from busgate.adapters.detached import detached
from busgate.adapters.observe import AdapterObserver
from busgate.bus.base import Responder
from busgate.contracts.config import Config, RpcSystem
from busgate.contracts.errors import BusgateError, NotFound
from busgate.contracts.wire import Reply, Request

log = logging.getLogger("busgate.adapter")


class SystemClient(Protocol):
    """What an adapter needs of a system type: answer a call, run a stream, close."""

    async def call(self, req: Request) -> Reply: ...

    async def stream(self, req: Request, responder: Responder) -> None: ...

    async def close(self) -> None: ...

    def observe(self, observer: AdapterObserver) -> None:
        """Route each runner call through ``observer`` (spans, metrics)."""


def client_for(name: str, config: Config) -> SystemClient:
    system = config.systems[name]
    match system:
        case RpcSystem():
            from busgate.adapters.rpc.client import RpcClient

            return RpcClient(name, system, config.gateway)
    raise ValueError(f"system {name!r}: unsupported type")  # pragma: no cover


class AdapterService:
    def __init__(
        self, config: Config, systems: list[str] | None = None, metrics_listen: str | None = None
    ) -> None:
        self.config = config
        self.systems = systems or sorted(config.systems)
        unknown = [s for s in self.systems if s not in config.systems]
        if unknown:
            raise ValueError(f"unknown system(s) {unknown}; known: {sorted(config.systems)}")
        gateway = config.gateway
        self.node = f"{gateway.id}-adapter-{secrets.token_hex(3)}"
        self.bus = bus_.from_url(gateway.bus, node=self.node, prefix=gateway.prefix)
        self.clients: dict[str, SystemClient] = {}
        self.commands: CommandWorker | None = None
        self.metrics_listen = metrics_listen
        self.observer = AdapterObserver(config, self.node)

    async def handle(self, req: Request, responder: Responder) -> None:
        client = self.clients.get(req.system)
        if req.detach:
            await detached(req, responder, client)
            return
        if req.kind == "stream":
            if client is None:
                await responder.step([], last=True, error=NotFound(f"no system {req.system!r}"))
                return
            try:
                await client.stream(req, responder)
            except Exception:
                # End the client's stream now rather than at the edge's idle timeout.
                log.exception("stream %s failed", req.id)
                with contextlib.suppress(BusgateError):
                    await responder.step([], last=True, error=BusgateError("internal error"))
            return
        try:
            if client is None:
                raise NotFound(f"no system {req.system!r} on this adapter")
            reply = await client.call(req)
        except BusgateError as exc:
            reply = Reply(id=req.id, status=exc.status, error=exc.to_wire())
        await responder.reply(reply)

    async def start(self) -> None:
        self.clients = {name: client_for(name, self.config) for name in self.systems}
        await self.bus.connect()
        handler = self.handle
        if self.observer.active:  # else nothing is wrapped: no cost per request
            for client in self.clients.values():
                client.observe(self.observer)
            await self.observer.start(self.bus, self.metrics_listen)
            handler = functools.partial(self.observer.handle, self.handle)
        await self.bus.serve(self.systems, handler, capacity=1000)
        commands = self.config.commands
        if commands is not None and commands.system in self.clients:
            client = self.clients[commands.system]
            observe = self.observer.command if self.observer.active else None
            self.commands = CommandWorker(self.bus, commands, client, observe)
            await self.commands.start()
        log.info("adapter %s serving %s", self.node, ", ".join(self.systems))

    async def stop(self) -> None:
        if self.commands is not None:
            await self.commands.stop()
        await self.bus.drain()
        await self.observer.close()  # its last spans still go out on the bus
        await self.bus.close()
        for client in self.clients.values():
            await client.close()

    async def run_forever(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        gateway = self.config.gateway
        beat = asyncio.create_task(
            self.bus.announce_forever(gateway.presence_interval, gateway.presence_ttl)
        )
        try:
            await stop.wait()
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            await self.stop()


def run(
    config: Config, systems: list[str] | None = None, metrics_listen: str | None = None
) -> None:
    asyncio.run(AdapterService(config, systems, metrics_listen).run_forever())
