"""``[systems.S.log]``: request and response logs of a system's calls, published on the bus
by the adapter (``CallLog`` messages), sampled, redacted and size-capped. Publishing happens
beside the call (a task), so the runner call never waits for the log; a log the bus cannot
take is counted and warned about (rate-limited), never the call's failure."""

from __future__ import annotations

import random
import time
from typing import Any

from busgate.bus.base import Bus
from busgate.bus.headers import KIND, REQUEST_ID
from busgate.bus.outbox import Outbox
from busgate.contracts.codec import encode
from busgate.contracts.config import Config, SystemLog
from busgate.contracts.redaction import redacted
from busgate.contracts.wire import CallLog, Reply, Request


class CallLogs:
    def __init__(self, config: Config, bus: Bus) -> None:
        self.bus = bus
        self.systems: dict[str, SystemLog] = {}
        self.configure(config)
        self.outbox = Outbox("call logs")

    def configure(self, config: Config) -> None:
        """Log what ``config`` says from the next call on (at start, and on a refresh)."""
        systems: dict[str, SystemLog] = {}
        for name, system in config.systems.items():
            settings: SystemLog | None = getattr(system, "log", None)  # rpc systems have it
            if settings is not None and (settings.requests or settings.responses):
                systems[name] = settings
        self.systems = systems

    def __bool__(self) -> bool:
        return bool(self.systems)

    def sampled(self, req: Request) -> SystemLog | None:
        """The log settings when this call is to be logged."""
        found = self.systems.get(req.system)
        if found is None or req.kind == "stream":
            return None
        if found.sample < 1.0 and random.random() >= found.sample:
            return None
        return found

    def request(self, settings: SystemLog, req: Request) -> None:
        if settings.requests:
            body = redacted(req.body, settings.max_body) if settings.max_body else None
            self._publish(settings.requests, self._event("request", req, body=body))

    def response(self, settings: SystemLog, req: Request, reply: Reply, started: float) -> None:
        if settings.responses:
            body = None
            if settings.max_body and reply.error is None:
                body = redacted(reply.body, settings.max_body)
            event = self._event(
                "response",
                req,
                status=reply.status,
                error=reply.error.code if reply.error is not None else "",
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
                body=body,
            )
            self._publish(settings.responses, event)

    def _event(self, direction: Any, req: Request, **fields: Any) -> CallLog:
        return CallLog(
            direction=direction,
            at=time.time(),
            request_id=req.shown_id,
            system=req.system,
            channel=req.channel,
            path=req.path,
            method=req.method,
            kind=req.kind,
            subject=req.identity.subject if req.identity is not None else "",
            **fields,
        )

    def _publish(self, dest: str, event: CallLog) -> None:
        headers = {REQUEST_ID: event.request_id, KIND: "calllog"}
        self.outbox.send(self.bus, dest, encode(event), headers)

    async def drain(self) -> None:
        await self.outbox.drain()
