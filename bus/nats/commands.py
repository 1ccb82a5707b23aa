"""Commands on NATS: a durable JetStream pull consumer per system, explicit acks.

The consumer (``PREFIX_cmd_SYSTEM``) filters ``PREFIX.cmd.SYSTEM.*`` in the command stream
and is shared by the system's adapters: each fetches as many commands as it has free slots.
The delivery count JetStream keeps is the attempt number, so it survives an adapter crash.
While the runner works the adapter sends "in progress" every third of ``ack_wait``; a
5xx or timeout is a negative ack with the backoff as delay; ``max_deliver`` is unlimited
because busgate dead-letters the command itself (JetStream would just stop delivering).

:func:`find_command` reads a published command back from the stream by its subject (each
command has its own, ``PREFIX.cmd.SYSTEM.ID``): what answers ``accepted`` on NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import nats
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from busgate.bus.commands import (
    DEAD,
    CommandConsumer,
    backoff_delay,
    command_name,
    crashed_error,
    dead_letter_bytes,
)
from busgate.bus.nats.transport import NatsBus
from busgate.bus.tasks import stop_task
from busgate.contracts.errors import BusUnavailable
from busgate.contracts.wire import DeadLetter, Request

log = logging.getLogger("busgate.bus.nats.commands")


class NatsCommandConsumer(CommandConsumer):
    bus: NatsBus

    def __init__(self, bus: NatsBus, *args: Any, **kwargs: Any) -> None:
        super().__init__(bus, *args, **kwargs)
        self._sub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._stopping = False
        self.durable = f"{bus.names.prefix}_cmd_{self.system}".replace(".", "_")

    async def start(self) -> None:
        await self.bus.ensure_command_stream()
        js = self.bus.nc.jetstream()
        config = ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.ack_wait,
            max_deliver=-1,
            max_ack_pending=-1,
            filter_subject=self.bus.names.command(f"{self.system}.*"),
        )
        self._sub = await js.pull_subscribe(
            self.bus.names.command(f"{self.system}.*"),
            durable=self.durable,
            stream=self.bus.command_stream,
            config=config,
        )
        self._reader = asyncio.create_task(self._read(), name=f"commands-{self.system}")

    async def _read(self) -> None:
        failing = False
        while not self._stopping:
            await self._slots.acquire()
            free = 1
            while free < self.concurrency and not self._slots.locked():
                await self._slots.acquire()
                free += 1
            try:
                msgs = await self._sub.fetch(batch=free, timeout=1.0)
                failing = False
            except (nats.errors.TimeoutError, TimeoutError):
                msgs = []
            except nats.errors.Error as exc:
                if not failing:
                    log.warning("commands %s: fetch failed (%r); retrying", self.system, exc)
                failing = True
                msgs = []
                await asyncio.sleep(0.25)
            for _ in range(free - len(msgs)):
                self._slots.release()
            for msg in msgs:
                self._spawn(self._handle(msg))

    async def _handle(self, msg: Msg) -> None:
        try:
            req = self.bus._decode(msg.data)
            if not isinstance(req, Request):
                await _quietly(msg.term())
                return
            attempt = msg.metadata.num_delivered
            if attempt > self.max_attempts:  # crashed adapters used up the attempts
                await self._dead(req, attempt - 1, crashed_error())
                await _quietly(msg.ack())
                return
            keep = asyncio.create_task(self._keep_alive(msg))
            try:
                error = await self._attempt(req, attempt)
            finally:
                await stop_task(keep, 1)
            if error is None:
                await _quietly(msg.ack())
            elif attempt >= self.max_attempts:
                await self._dead(req, attempt, error)
                await _quietly(msg.ack())
            else:
                await _quietly(
                    msg.nak(delay=backoff_delay(attempt, self.backoff, self.max_backoff))
                )
        except BusUnavailable as exc:
            log.warning("commands %s: %s; JetStream will redeliver", self.system, exc)
        finally:
            self._slots.release()

    async def _keep_alive(self, msg: Msg) -> None:
        """Tell JetStream the command is still being worked on, so it does not redeliver
        it to another adapter while the runner takes long."""
        while True:
            await asyncio.sleep(max(self.ack_wait / 3, 0.1))
            await _quietly(msg.in_progress())

    async def _publish_dead(self, letter: DeadLetter) -> None:
        await self.bus.publish_command(
            f"{DEAD}.{self.system}.{letter.command.id}", dead_letter_bytes(letter)
        )

    async def _stop_reading(self) -> None:
        self._stopping = True
        await stop_task(self._reader, 2)

    async def _close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()  # the durable consumer stays


async def find_command(
    bus: NatsBus, system: str, command_id: str, *, max_age: float = 0.0
) -> Request | None:
    """The command ``command_id`` of ``system`` as JetStream stored it, if it is there and
    younger than ``max_age`` seconds (0 = any age); None otherwise.

    One request to the server (the stream's last message on the command's own subject, an
    index lookup): JetStream acknowledged the publish only once it had stored it, so every
    edge finds a command as soon as any edge answered 202. The age bound keeps a command
    the stream still holds from showing ``accepted`` after its status aged out of the store
    (that status was written later, so it expires later)."""
    from nats.js.errors import NotFoundError

    if not bus.nc.is_connected:
        raise BusUnavailable("the NATS connection is down; try again shortly")
    subject = bus.names.command(command_name(system, command_id))
    try:
        msg = await bus.nc.jetstream().get_last_msg(bus.command_stream, subject)
    except NotFoundError:  # no such message, or no stream yet (nothing published)
        return None
    except (nats.errors.Error, TimeoutError) as exc:
        raise BusUnavailable(f"the command stream did not answer: {type(exc).__name__}") from None
    if max_age and msg.time is not None and time.time() - msg.time.timestamp() > max_age:
        return None
    req = bus._decode(msg.data or b"")
    if not isinstance(req, Request) or req.kind != "command" or req.id != command_id:
        return None
    return req


async def _quietly(call: Any) -> None:
    """An ack that cannot go out (connection down) is no loss: JetStream redelivers."""
    try:
        await call
    except (nats.errors.Error, TimeoutError) as exc:
        log.warning("commands: ack not sent (%r); the command will be redelivered", exc)
