"""NATS transport.

Replies come back on one wildcard subscription per edge node, ``PREFIX.reply.NODE.>``, with
the request id as the last token: the server's "no responders" status message carries no
body, so the subject is what correlates it. Requests go to ``PREFIX.req.SYSTEM`` and are
shared by the system's adapters through a queue group. Durable commands go to JetStream.

FastStream was considered for the adapter subscribers and left out: it would hide the
message headers, the raw MessagePack bytes and the no-responders status that the
correlation here is built on, for one ``subscribe`` call per system.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
import time
from typing import Any

import msgspec
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import (
    ConnectionClosedError,
    ConnectionReconnectingError,
    MaxPayloadError,
    OutboundBufferLimitError,
)
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import APIError

from busgate.bus import limits
from busgate.bus.base import Bus
from busgate.bus.nats import wire
from busgate.bus.nats.leave import leave
from busgate.bus.security import BusTls, context_for
from busgate.contracts.errors import BusUnavailable, MessageTooLarge, NoResponders

log = logging.getLogger("busgate.bus.nats")

_STATUS = "Status"
_NO_RESPONDERS = "503"
ACK_TIMEOUT = 5.0
"""Seconds a command publish waits for JetStream's ack (nats-py's JetStream default)."""
_ACK_SWEEP = 0.25
"""Seconds between checks for acks overdue (one timer for all publishes, not one each)."""


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int | None = None
    description: str | None = None


class _PubAck(msgspec.Struct):
    """JetStream's answer to a publish: the ack, or an error (other fields ignored)."""

    stream: str = ""
    seq: int = 0
    error: _ApiError | None = None


_pub_ack = msgspec.json.Decoder(_PubAck)


async def connect(url: str, **options: Any) -> Client:
    """A plain nats-py client for a bus URL, for the tools that read the bus without being a
    node (``busgate trace``, ``busgate tail``): its servers, and its TLS files
    (``tls://…?ca=&cert=&key=``) used as a node uses them. ``options``: ``nats.connect``'s."""
    from busgate.bus import nats_tls_of, parse_url

    return await nats.connect(parse_url(url)[1], tls=nats_tls_of(url), **options)


class NatsBus(Bus):
    requires_presence = False

    def __init__(
        self,
        servers: list[str],
        *,
        node: str,
        prefix: str = "busgate",
        connect_timeout: float = 10,
        max_payload: int | None = None,
        tls: BusTls | None = None,
    ) -> None:
        """``max_payload``: the servers' setting when it is not the default 1 MiB (bus URL
        option), for what is checked without connecting; once connected, the server's own
        (from its INFO) caps it. ``tls``: PEM files for ``tls://`` servers (CA, client
        certificate and key), re-read on reconnects as ``bus.security`` says."""
        super().__init__(node=node, prefix=prefix)
        self.servers = servers
        self.connect_timeout = connect_timeout
        self.max_payload = max_payload
        self.max_message = limits.carried(max_payload or limits.DEFAULT_MAX_MESSAGE)
        self.tls: ssl.SSLContext | None = context_for(tls) if tls is not None else None
        self.nc = Client()
        self._subs: list[Subscription] = []
        self._request_subs: list[Subscription] = []
        self._reply_prefix = f"{self.names.reply(node)}."
        self._stream_ready = False
        self._ack_prefix = ""
        """``_INBOX.<nuid>.``: acks of command publishes come back under it (one wildcard
        subscription); a publish's token (a counter) follows it."""
        self._acks: dict[str, tuple[asyncio.Future[Msg], float]] = {}
        """Publishes waiting for their ack, in publishing order (= deadline order)."""
        self._ack_tokens = itertools.count()
        self._ack_sweep: asyncio.TimerHandle | None = None

    @property
    def connected(self) -> bool:
        return self.nc.is_connected

    def reply_address(self, request_id: str) -> str:
        return self._reply_prefix + request_id

    def _learn_max_payload(self) -> None:
        """Take the server's ``max_payload`` (from its INFO), or the URL's if lower: called
        on every (re)connect, since another server of the cluster may say otherwise."""
        payload = self.nc.max_payload
        if self.max_payload:
            payload = min(payload, self.max_payload)
        self.max_message = limits.carried(payload)

    async def connect(self) -> None:
        async def on_error(exc: Exception) -> None:
            log.warning("nats: %s", exc or type(exc).__name__)

        async def on_disconnect() -> None:
            if not self.nc.is_closed and not self.nc.is_draining:
                log.warning("nats: disconnected; reconnecting")
                # Replies cannot reach this node until it is back, and a request written just
                # before the drop waits in the client's buffer: answer 503 now, not at the
                # deadline.
                self.pending.close(BusUnavailable("the NATS connection dropped; try again"))
                self._fail_acks(BusUnavailable("the NATS connection dropped; try again"))

        async def on_reconnect() -> None:
            log.info("nats: reconnected to %s", self.nc.connected_url)
            self._learn_max_payload()

        await asyncio.wait_for(
            self.nc.connect(
                self.servers,
                name=self.node,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,  # type: ignore[arg-type]  # accepts float
                connect_timeout=2,
                ping_interval=5,
                max_outstanding_pings=2,
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
                tls=self.tls,  # None = nats-py's default for tls://
            ),
            self.connect_timeout,
        )
        self._learn_max_payload()
        self._subs.append(await self.nc.subscribe(self._reply_prefix + ">", cb=self._reply_msg))
        self._subs.append(await self.nc.subscribe(self.names.control, cb=self._control_msg))

    async def _reply_msg(self, msg: Msg) -> None:
        if not msg.data and msg.headers and msg.headers.get(_STATUS) == _NO_RESPONDERS:
            request_id = msg.subject[len(self._reply_prefix) :]
            self.pending.fail(request_id, NoResponders("no adapter serves this system"))
            return
        self._on_reply(msg.data)

    async def _control_msg(self, msg: Msg) -> None:
        self._on_control(msg.data)

    async def _request_msg(self, msg: Msg) -> None:
        self._on_request(msg.data)

    async def _listen_requests(self, system: str) -> None:
        sub = await self.nc.subscribe(
            self.names.request(system),
            queue=self.names.group(system),
            cb=self._request_msg,
            pending_msgs_limit=65536,
        )
        self._subs.append(sub)
        self._request_subs.append(sub)
        # Return once the server knows the subscription: until then a request from another
        # connection is answered "no responders" although serve() has returned.
        await self.nc.flush()

    async def _stop_requests(self) -> None:
        subs, self._request_subs = self._request_subs, []
        await self._leave(subs)

    async def _stop_requests_for(self, systems: tuple[str, ...]) -> None:
        subjects = {self.names.request(s) for s in systems}
        leaving = [sub for sub in self._request_subs if sub.subject in subjects]
        self._request_subs = [sub for sub in self._request_subs if sub not in leaving]
        await self._leave(leaving)

    async def _leave(self, subs: list[Subscription]) -> None:
        """Unsubscribe, then hand on what the server had already sent us, late ones included
        (``leave``); from then on the other members get the group's requests. All at once:
        each waits out the same grace."""
        for sub in subs:
            self._subs.remove(sub)
        results = await asyncio.gather(
            *(leave(self.nc, sub) for sub in subs), return_exceptions=True
        )
        for sub, result in zip(subs, results, strict=True):
            if isinstance(result, nats.errors.Error):  # closed, reconnecting, flush timed out
                log.warning(
                    "nats: leaving %s: %r; requests in flight may be lost", sub.subject, result
                )
            elif isinstance(result, BaseException):
                raise result

    async def _send(
        self, dest: str, data: bytes, headers: dict[str, str], *, reply: str = ""
    ) -> None:
        if not self.nc.is_connected:
            raise BusUnavailable("the NATS connection is down; try again shortly")
        # nats-py checks the payload alone; the server counts headers too, and closes the
        # connection of a client over its max_payload: refuse here, with room for headers.
        if len(data) > (limit := self.max_message):
            raise MessageTooLarge(
                f"{len(data)} bytes is more than the {limit} bytes the bus carries per message"
            )
        try:
            await wire.publish(self.nc, dest, data, reply, headers)
        except MaxPayloadError:
            raise MessageTooLarge(f"{len(data)} bytes is more than the bus carries") from None
        except (ConnectionClosedError, OutboundBufferLimitError) as exc:
            raise BusUnavailable(f"NATS publish failed: {type(exc).__name__}") from None

    @property
    def command_stream(self) -> str:
        return f"{self.names.prefix}_cmd".replace(".", "_").upper()

    async def ensure_command_stream(self) -> None:
        """The JetStream stream of commands (file storage: they survive a server restart)."""
        if self._stream_ready:
            return
        js = self.nc.jetstream()
        config = StreamConfig(
            name=self.command_stream,
            subjects=[self.names.command() + ".>"],
            storage=StorageType.FILE,
        )
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            await js.update_stream(config)
        self._stream_ready = True

    async def publish_command(
        self, name: str, data: bytes, headers: dict[str, str] | None = None
    ) -> None:
        """JetStream's ``publish``, made here: the message goes out with its header block
        pre-built (``bus.nats.wire``), its ack comes back on one wildcard inbox and resolves
        a future, and one timer checks all publishes for an overdue ack. nats-py's
        ``js.publish`` does per call: a NUID and ``token_hex`` for the inbox, the header
        encoding, ``asyncio.wait_for`` (a timer and a waiter future), ``json.loads`` and a
        ``PubAck`` built through ``dataclasses.fields``: 26 µs of the edge's command (py-spy,
        64 in flight), 11 µs more than the floor's ``js.publish`` of a bare body. The
        guarantee is the same: return only once the stream acknowledged; BusUnavailable
        when it did not (no stream, no ack in time, connection lost)."""
        if not self.nc.is_connected:
            raise BusUnavailable("the NATS connection is down; try again shortly")
        if len(data) > self.max_message:
            raise MessageTooLarge(f"a command of {len(data)} bytes is more than the bus carries")
        try:
            if not self._stream_ready:
                await self.ensure_command_stream()
            if not self._ack_prefix:
                await self._listen_acks()
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusUnavailable(f"JetStream is not reachable: {type(exc).__name__}") from None
        token = str(next(self._ack_tokens))
        ack: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._acks[token] = (ack, time.monotonic() + ACK_TIMEOUT)
        if self._ack_sweep is None:
            self._ack_sweep = asyncio.get_running_loop().call_later(_ACK_SWEEP, self._sweep_acks)
        try:
            await wire.publish(
                self.nc, self.names.command(name), data, self._ack_prefix + token, headers or {}
            )
            msg = await ack
        except (ConnectionClosedError, ConnectionReconnectingError, OutboundBufferLimitError) as e:
            raise BusUnavailable(f"JetStream did not acknowledge: {type(e).__name__}") from None
        finally:
            self._acks.pop(token, None)
        if not msg.data and msg.headers and msg.headers.get(_STATUS) == _NO_RESPONDERS:
            raise BusUnavailable("JetStream did not acknowledge: no stream takes the command")
        answer = _pub_ack.decode(msg.data)
        if (error := answer.error) is not None:
            if error.code == 503:
                raise BusUnavailable(f"JetStream did not acknowledge: {error.description}")
            raise APIError(code=error.code, err_code=error.err_code, description=error.description)

    async def _listen_acks(self) -> None:
        prefix = self.nc.new_inbox() + "."
        self._subs.append(await self.nc.subscribe(prefix + "*", cb=self._ack_msg))
        self._ack_prefix = prefix

    async def _ack_msg(self, msg: Msg) -> None:
        entry = self._acks.pop(msg.subject[len(self._ack_prefix) :], None)
        if entry is not None and not entry[0].done():
            entry[0].set_result(msg)

    def _sweep_acks(self) -> None:
        """Fail the publishes whose ack is overdue (the oldest first: they are in order)."""
        self._ack_sweep = None
        acks, now = self._acks, time.monotonic()
        while acks:
            token = next(iter(acks))
            ack, deadline = acks[token]
            if deadline > now:
                break
            del acks[token]
            if not ack.done():
                ack.set_exception(BusUnavailable("JetStream did not acknowledge in time"))
        if acks:
            self._ack_sweep = asyncio.get_running_loop().call_later(_ACK_SWEEP, self._sweep_acks)

    def _fail_acks(self, error: Exception) -> None:
        acks, self._acks = self._acks, {}
        for ack, _ in acks.values():
            if not ack.done():
                ack.set_exception(error)

    async def _close_transport(self) -> None:
        try:
            if self.nc.is_closed:
                return
            try:  # the drain still delivers acks already on their way
                await asyncio.wait_for(self.nc.drain(), 5)
            except (TimeoutError, ConnectionClosedError, ConnectionReconnectingError):
                # Closing while reconnecting: nats-py flushes into a socket the server may
                # have just dropped ("Connection lost"); there is nothing left to deliver.
                with contextlib.suppress(OSError):
                    await self.nc.close()
        finally:
            if self._ack_sweep is not None:
                self._ack_sweep.cancel()
                self._ack_sweep = None
            self._fail_acks(BusUnavailable("the bus is closing"))
