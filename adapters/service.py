"""One adapter process: serves some systems, dispatches each request to its system's client."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import signal
import time
from typing import Protocol

from busgate import bus as bus_
from busgate import gc_tuning
from busgate.adapters.call_logs import CallLogs
from busgate.adapters.commands import CommandWorker
from busgate.adapters.detached import detached
from busgate.adapters.observe import AdapterObserver
from busgate.adapters.schemas import SchemaPublisher
from busgate.bus import config_source
from busgate.bus.base import Responder
from busgate.contracts.config import BusSystem, Config, CrudSystem, RpcSystem, RsocketSystem
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
            from busgate.adapters.retry import retry_for
            from busgate.adapters.rpc.client import RpcClient

            return RpcClient(name, system, config.gateway, retry_for(config))
        case CrudSystem():
            from busgate.adapters.crud.client import CrudClient

            return CrudClient(name, system, config.gateway)
        case RsocketSystem():
            from busgate.adapters.rsocket.client import RsocketClient

            return RsocketClient(name, system, config.gateway)
    raise ValueError(f"system {name!r}: unsupported type")  # pragma: no cover


def client_settings(name: str, config: Config) -> tuple[object, ...]:
    """What a system's client is built from (``client_for``): the system (timeouts, TLS, pool,
    auth, …), the gateway's defaults and the retry policies (``resilience``) of the channels
    that call it. A refresh that changes any of them gets the system a new client."""
    channels = tuple(
        (cname, ch.resilience, tuple((key, rule.resilience) for key, rule in ch.paths.items()))
        for cname, ch in sorted(config.channels.items())
        if ch.system == name
    )
    return (config.systems[name], config.gateway, channels)


class AdapterService:
    def __init__(
        self,
        config: Config,
        systems: list[str] | None = None,
        metrics_listen: str | None = None,
        config_path: str | None = None,
    ) -> None:
        self.config = config
        self.chosen = tuple(systems or ())
        """``--system``: only these, whatever a refresh adds; empty = every system."""
        self.config_path = config_path
        self.source: config_source.ConfigSource | None = None
        self.retired: list[SystemClient] = []
        """Clients of systems a refresh removed or changed, closed once their calls ended."""
        self._closing: set[asyncio.Task[None]] = set()
        # A bus-native system has no adapter: its runner consumes its requests itself.
        adapted = sorted(n for n, s in config.systems.items() if not isinstance(s, BusSystem))
        self.systems = systems or adapted
        unknown = [s for s in self.systems if s not in adapted]
        if unknown:
            raise ValueError(f"unknown system(s) {unknown}; adapters serve: {adapted}")
        gateway = config.gateway
        self.node = f"{gateway.id}-adapter-{secrets.token_hex(3)}"
        self.bus = bus_.from_url(gateway.bus, node=self.node, prefix=gateway.prefix)
        self.clients: dict[str, SystemClient] = {}
        self.settings: dict[str, tuple[object, ...]] = {}
        """What each client was built from (``client_settings``)."""
        self.commands: CommandWorker | None = None
        self.schemas = SchemaPublisher(self.bus, lambda name: self.clients.get(name))
        self.metrics_listen = metrics_listen
        self.observer = AdapterObserver(config, self.node)
        self.call_logs = CallLogs(config, self.bus)

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
        logged = self.call_logs.sampled(req) if self.call_logs else None
        if logged is not None:
            started = time.perf_counter()
            self.call_logs.request(logged, req)
        try:
            if client is None:
                raise NotFound(f"no system {req.system!r} on this adapter")
            reply = await client.call(req)
        except BusgateError as exc:
            reply = Reply(id=req.id, status=exc.status, error=exc.to_wire())
        if logged is not None:
            self.call_logs.response(logged, req, reply, started)
        await responder.reply(reply)

    async def start(self) -> None:
        self.clients = {name: client_for(name, self.config) for name in self.systems}
        self.settings = {name: client_settings(name, self.config) for name in self.systems}
        await self.bus.connect()
        handler = self.handle
        if self.observer.active:  # else nothing is wrapped: no cost per request
            for client in self.clients.values():
                client.observe(self.observer)
            await self.observer.start(self.bus, self.metrics_listen)
            handler = functools.partial(self.observer.handle, self.handle)
        await self.bus.serve(self.systems, handler, capacity=1000)
        await self._share_schemas()
        gateway = self.config.gateway
        if gateway.config_source == "bus" or (self.config_path and gateway.refresh > 0):
            self.source = config_source.ConfigSource(
                self.config, node=self.node, role="adapter", path=self.config_path
            )
            await self.source.start(self.bus, self.apply)
            self.bus.on_refresh = self.source.answer
        else:
            self.bus.on_refresh = config_source.fixed(self.node, "adapter")
        commands = self.config.commands
        if commands is not None and commands.system in self.clients:
            client = self.clients[commands.system]
            observe = self.observer.command if self.observer.active else None
            self.commands = CommandWorker(self.bus, commands, client, observe)
            await self.commands.start()
        log.info("adapter %s serving %s", self.node, ", ".join(self.systems))

    async def apply(self, config: Config) -> None:
        """Run ``config`` (a refresh): serve new systems, drain removed ones, and call
        changed ones with a new client; calls in flight end on the client they started on."""
        if config.commands != self.config.commands:  # the worker is built once, at start
            raise ValueError("commands: changed; restart this adapter to apply the change")
        adapted = {n for n, s in config.systems.items() if not isinstance(s, BusSystem)}
        wanted = [s for s in (self.chosen or sorted(adapted)) if s in adapted]
        fresh = {
            name: client_for(name, config)
            for name in wanted
            if name not in self.clients or client_settings(name, config) != self.settings[name]
        }
        if self.observer.active:
            for client in fresh.values():
                client.observe(self.observer)
        gone = [s for s in self.systems if s not in wanted]
        replaced = [self.clients[n] for n in fresh if n in self.clients]
        self.clients.update(fresh)
        self.config, self.systems = config, wanted
        self.settings = {name: client_settings(name, config) for name in wanted}
        self.call_logs.configure(config)  # request/response logs ([systems.S.log])
        await self._share_schemas()
        await self.bus.serve_more(wanted)
        await self.bus.stop_serving_systems(gone)
        retired = [self.clients.pop(s) for s in gone] + replaced
        if retired:  # after the longest call a retired client may still be serving
            later = max(config.gateway.timeout, *(s.timeout or 0 for s in config.systems.values()))
            self.retired.extend(retired)
            task = asyncio.create_task(self._close_later(retired, later + 1))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        log.info("adapter %s now serving %s", self.node, ", ".join(wanted) or "nothing")

    async def _share_schemas(self) -> None:
        """The OpenAPI schemas of the served systems, for the edges (``adapters.schemas``);
        never a reason not to serve."""
        try:
            await self.schemas.update(self.config, self.systems)
        except Exception as exc:
            log.warning("adapter %s: schemas not shared: %s", self.node, exc)

    async def _close_later(self, clients: list[SystemClient], delay: float) -> None:
        await asyncio.sleep(delay)
        for client in clients:
            self.retired.remove(client)
        await _close_all(clients)

    async def stop(self) -> None:
        if self.source is not None:
            await self.source.close()
        for task in list(self._closing):
            task.cancel()
        if self.commands is not None:
            await self.commands.stop()
        await self.bus.drain()
        await self.call_logs.drain()
        await self.observer.close()  # its last spans still go out on the bus
        await self.schemas.close()
        await self.bus.close()
        for client in self.clients.values():
            await client.close()
        await _close_all(self.retired)

    async def run_forever(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        gc_tuning.settle()
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


async def _close_all(clients: list[SystemClient]) -> None:
    for client in clients:
        with contextlib.suppress(Exception):
            await client.close()


def run(
    config: Config,
    systems: list[str] | None = None,
    metrics_listen: str | None = None,
    config_path: str | None = None,
) -> None:
    async def main() -> None:
        start = await config_source.initial_config(config)
        await AdapterService(start, systems, metrics_listen, config_path).run_forever()

    asyncio.run(main())
