"""Executes commands: the adapter side of ``[commands]``.

An adapter that serves the commands' system takes them off the bus durably (see
``bus.commands``), calls the system's runner with ``meta.commandId`` and ``meta.attempt``,
and writes each step into the command's status on the bus: ``running`` per attempt, then
``done`` (2xx), ``failed`` (4xx: the command itself is wrong, retrying would not help) or
``dead`` (``max_attempts`` failures: 5xx, timeouts, the runner unreachable).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

import msgspec

from busgate.bus.base import Bus
from busgate.bus.commands import CommandConsumer, Execute, command_consumer
from busgate.bus.store import Store, open_store
from busgate.contracts.commands import CommandStatus, Status
from busgate.contracts.config import Commands
from busgate.contracts.errors import BusgateError, BusUnavailable
from busgate.contracts.wire import Error, Reply, Request

log = logging.getLogger("busgate.adapter.commands")
_json_check = msgspec.json.Decoder()


class Caller(Protocol):
    """What the worker needs of a system client (``adapters.service.SystemClient``)."""

    async def call(self, req: Request) -> Reply: ...


class CommandWorker:
    def __init__(
        self,
        bus: Bus,
        config: Commands,
        client: Caller,
        observe: Callable[[Execute], Execute] | None = None,
    ) -> None:
        """``observe`` wraps each attempt (spans: ``AdapterObserver.command``)."""
        self.bus = bus
        self.config = config
        self.client = client
        self.status: Store[CommandStatus] = open_store(
            bus, "commands", CommandStatus, max_age=config.retention
        )
        self.consumer: CommandConsumer = command_consumer(
            bus,
            config.system,
            observe(self.execute) if observe is not None else self.execute,
            self.on_dead,
            max_attempts=config.max_attempts,
            backoff=config.backoff,
            max_backoff=config.max_backoff,
            concurrency=config.concurrency,
            ack_wait=config.ack_wait,
            prior_attempts=self.prior_attempts,
        )

    async def start(self) -> None:
        await self.status.start()
        await self.consumer.start()

    async def stop(self, grace: float = 10.0) -> None:
        await self.consumer.stop(grace)
        await self.status.close()

    async def execute(self, req: Request, attempt: int) -> Error | None:
        req = msgspec.structs.replace(req, attempt=attempt, deadline=0.0)
        await self._write(req, "running", attempt)
        try:
            reply = await self.client.call(req)
        except BusgateError as exc:
            log.info("command %s attempt %d: %s", req.id, attempt, exc.message)
            await self._write(req, "running", attempt, error=exc.to_wire())
            return exc.to_wire()
        status: Status = "done" if reply.status < 400 else "failed"
        result = reply.body if _is_json(reply.body) else None
        error = None
        if status == "failed":
            error = Error(code="runner_refused", message=f"the runner answered {reply.status}")
        await self._write(req, status, attempt, result=result, http=reply.status, error=error)
        return None

    async def on_dead(self, req: Request, attempts: int, error: Error) -> None:
        await self._write(req, "dead", attempts, error=error)

    async def prior_attempts(self, command_id: str) -> int:
        """Attempts the command had before this adapter got it (the local view: no I/O)."""
        found = self.status.value(command_id)
        return found.attempts if found is not None else 0

    async def _write(
        self,
        req: Request,
        status: Status,
        attempts: int,
        *,
        result: bytes | None = None,
        http: int = 0,
        error: Error | None = None,
    ) -> None:
        record = CommandStatus(
            id=req.id,
            status=status,
            path=req.path,
            subject=req.identity.subject if req.identity else None,
            attempts=attempts,
            result=result,
            http_status=http,
            error={"code": error.code, "message": error.message} if error else None,
            updated=time.time(),
        )
        try:
            await self.status.put(req.id, record, ttl=self.config.retention)
        except BusUnavailable as exc:
            # The command itself goes on; only its status lags (logged, never fatal).
            log.warning("command %s: status %s not stored: %s", req.id, status, exc)


def _is_json(body: bytes) -> bool:
    if not body:
        return False
    try:
        _json_check.decode(body)
    except msgspec.DecodeError:
        return False
    return True
