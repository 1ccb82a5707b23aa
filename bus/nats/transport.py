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
import logging
import ssl
from typing import Any

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
from nats.js.client import JetStreamContext
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

from busgate.bus import limits
from busgate.bus.base import Bus
from busgate.bus.security import BusTls, context_for
from busgate.contracts.errors import BusUnavailable, MessageTooLarge, NoResponders

log = logging.getLogger("busgate.bus.nats")

_STATUS = "Status"
_NO_RESPONDERS = "503"


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
        self._js: JetStreamContext | None = None

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
        for sub in subs:
            self._subs.remove(sub)
            # Unsubscribes, then hands on what the server had already sent us; from then on
            # the server gives the queue group's requests to the other members only.
            try:
                await sub.drain()  # type: ignore[no-untyped-call]
            except nats.errors.Error as exc:  # closed, reconnecting, flush timed out
                log.warning(
                    "nats: leaving %s: %r; requests in flight may be lost", sub.subject, exc
                )

    async def _stop_requests_for(self, systems: tuple[str, ...]) -> None:
        subjects = {self.names.request(s) for s in systems}
        leaving = [sub for sub in self._request_subs if sub.subject in subjects]
        self._request_subs = [sub for sub in self._request_subs if sub not in leaving]
        for sub in leaving:
            self._subs.remove(sub)
            try:
                await sub.drain()  # type: ignore[no-untyped-call]
            except nats.errors.Error as exc:
                log.warning("nats: leaving %s: %r", sub.subject, exc)

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
            await self.nc.publish(dest, data, reply=reply, headers=headers or None)
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
        if not self.nc.is_connected:
            raise BusUnavailable("the NATS connection is down; try again shortly")
        if len(data) > self.max_message:
            raise MessageTooLarge(f"a command of {len(data)} bytes is more than the bus carries")
        try:
            if not self._stream_ready:
                await self.ensure_command_stream()
            if self._js is None:  # one context, as nats-py means it (each builds parsers, locks)
                self._js = self.nc.jetstream()
            await self._js.publish(self.names.command(name), data, headers=headers)
        except (
            NoStreamResponseError,
            ServiceUnavailableError,
            nats.errors.TimeoutError,
            ConnectionClosedError,
            ConnectionReconnectingError,
        ) as exc:
            raise BusUnavailable(f"JetStream did not acknowledge: {type(exc).__name__}") from None

    async def _close_transport(self) -> None:
        if self.nc.is_closed:
            return
        try:
            await asyncio.wait_for(self.nc.drain(), 5)
        except (TimeoutError, ConnectionClosedError, ConnectionReconnectingError):
            await self.nc.close()
