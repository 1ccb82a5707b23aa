"""Messages that cross the bus between edge nodes and adapters.

Every message is a tagged Struct (tag field ``t``) carrying a version ``v``. Decoders
ignore unknown fields and every field added later gets a default, so a newer edge and an
older adapter can run side by side during a rolling deploy. Bodies stay raw bytes: the
edge never re-parses what it forwards.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

WIRE_VERSION = 1

Kind = Literal["request", "stream", "command", "message", "track"]


class Wire(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="t"):
    """Base of every bus message: tagged, versioned, tolerant of unknown fields."""

    v: int = WIRE_VERSION


class Identity(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Who made the call, once authenticated; runners see it as ``meta.identity``."""

    subject: str
    roles: tuple[str, ...] = ()
    claims: dict[str, Any] = {}
    session_id: str | None = None


class Origin(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Where the call came from, as the edge saw it."""

    client_ip: str = ""
    user_agent: str = ""
    forwarded_for: str = ""


class Error(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A typed failure; ``status`` is the HTTP status the edge answers with."""

    code: str
    message: str
    status: int = 502
    retryable: bool = False


class Request(Wire, frozen=True, tag="req"):
    """One call from a client, on its way to the adapter of ``system``."""

    id: str
    """Correlates the Reply or StreamSteps with the waiting call: unique per edge node, always
    chosen by the edge, never by a client (two calls reusing one client id must not receive
    each other's replies)."""
    client_id: str = ""
    """The request id the client chose (``gateway.accept_request_id``), when it differs from
    ``id``: what the client sees in headers and errors, and runners in ``meta.requestId`` and
    ``X-Request-Id``. For logs and runners only; never used to correlate."""
    kind: Kind = "request"
    traceparent: str = ""
    tracestate: str = ""
    channel: str = ""
    system: str = ""
    path: str = ""
    method: str = "POST"
    query: dict[str, str] = {}
    headers: dict[str, str] = {}
    body: bytes = b""
    identity: Identity | None = None
    origin: Origin | None = None
    reply_to: str = ""
    deadline: float = 0.0
    """Absolute, in seconds since the epoch; 0 means none."""
    attempt: int = 1
    resume: str | None = None
    """For streams: the ``next`` cursor to resume after (SSE ``Last-Event-ID``)."""
    credits: int = 0
    """For streams: how many steps the edge can take before its first :class:`Credit`
    (RSocket's initial request-n). 0 = no flow control (an edge older than credits): the
    adapter then sends steps as fast as the saga makes them."""
    detach: Literal["", "gateway", "backend"] = ""
    """``X-Async``: ``gateway`` = nobody waits for an answer (no ``reply_to``); ``backend`` =
    the adapter replies 202 as soon as it has taken the request, then calls the runner and
    drops its answer."""

    meta: dict[str, Any] = {}
    """Extra keys for the runner's ``meta`` (a channel alias's mappings); the keys busgate
    sets itself (``requestId``, ``identity``, …) always win over these."""
    spans_in_reply: bool = False
    """A traced call whose edge exports the answering node's spans with its own: that node
    puts them in :attr:`Reply.spans` rather than publishing them itself (they go out in the
    edge's span message; see ``bus.trace_export``). An older node ignores it and exports its
    spans itself, as before."""
    served_in_reply: bool = False
    """With :attr:`spans_in_reply`: the edge also takes the compact :attr:`Reply.served`
    record (an edge from before it only reads :attr:`Reply.spans`, so an adapter sends it
    a span batch instead)."""

    @property
    def shown_id(self) -> str:
        """The id the client knows this call by."""
        return self.client_id or self.id


class Reply(Wire, frozen=True, tag="reply"):
    """The answer to a Request: the runner's status, headers and body, or an Error."""

    id: str
    status: int = 200
    headers: dict[str, str] = {}
    body: bytes = b""
    error: Error | None = None
    spans: bytes = b""
    """The answering node's finished spans of this call, an encoded span batch
    (``bus.spans``), when the Request asked for them (``spans_in_reply``)."""
    served: bytes = b""
    """How the answering node handled this call, when the Request asked for its spans: its
    CONSUMER span and runner calls as an encoded ``bus.spans.Served``, which the edge puts
    in its PRODUCER span as it is (not decoded)."""


class StreamStep(Wire, frozen=True, tag="step"):
    """One saga step of a stream; the last one (or one carrying an error) ends it."""

    id: str
    seq: int
    items: list[bytes] = []
    """Each item already encoded as JSON, so the edge writes it without re-encoding."""
    next: str | None = None
    last: bool = False
    error: Error | None = None
    credit_to: str = ""
    """Where the edge sends this stream's :class:`Credit` messages (the serving adapter's
    reply address), so credits go to one node rather than being broadcast."""


class Credit(Wire, frozen=True, tag="credit"):
    """The edge can take the stream's steps up to ``limit`` (a ``seq``): flow control.

    Cumulative, unlike RSocket's incremental request-n: a lost or repeated Credit is healed
    by the next one, since the bus delivers at most once.
    """

    id: str
    limit: int


class Cancel(Wire, frozen=True, tag="cancel"):
    """The client went away: stop the saga loop for ``id``."""

    id: str
    reason: str = ""


class Presence(Wire, frozen=True, tag="presence"):
    """An adapter's heartbeat: which systems it serves, broadcast on the control subject."""

    node: str
    systems: tuple[str, ...] = ()
    capacity: int = 0
    ttl: float = 6.0
    partitions: dict[str, tuple[int, ...]] = {}
    """Kafka: the request-topic partitions this adapter holds now, per system. Edges send
    requests only to partitions some live adapter holds, so a request never waits in the
    partition of an adapter that left until its group has rebalanced."""


class DeadLetter(Wire, frozen=True, tag="dead"):
    """A command that failed ``max_attempts`` times, with its last error; published to the
    dead letters (NATS ``PREFIX.cmd._dead.SYSTEM.ID``, Kafka topic ``PREFIX.cmd.dead``)."""

    command: Request
    attempts: int
    error: Error


class AuditEvent(Wire, frozen=True, tag="audit"):
    """Who called what, when, from where, with which status and how long it took: one per
    call of an audited path (``audit = true``), on the audit subject/topic. Never a token,
    a password or a header; the body only with ``audit_body`` (secret-looking keys
    redacted)."""

    at: float
    """Seconds since the epoch, when the edge took the call."""
    request_id: str
    trace_id: str = ""
    node: str = ""
    channel: str = ""
    path: str = ""
    """The public path (an alias's, when it is one)."""
    target: str = ""
    """The path the runner was called with, when it differs (an alias's target)."""
    method: str = ""
    status: int = 0
    error: str = ""
    """The error code, when the call failed."""
    duration_ms: float = 0.0
    subject: str = ""
    roles: tuple[str, ...] = ()
    client_ip: str = ""
    user_agent: str = ""
    forwarded_for: str = ""
    body: bytes | None = None


class CallLog(Wire, frozen=True, tag="calllog"):
    """One side of a call an adapter logged (``[systems.S.log]``): the request as it went to
    the runner, or the answer. Bodies are redacted and cut; never a header or token."""

    direction: Literal["request", "response"]
    at: float
    request_id: str
    system: str = ""
    channel: str = ""
    path: str = ""
    method: str = ""
    kind: str = ""
    subject: str = ""
    status: int = 0
    error: str = ""
    duration_ms: float = 0.0
    body: bytes | None = None


class Refresh(Wire, frozen=True, tag="refresh"):
    """Re-read the config source now (``POST /api/control``), broadcast on the control
    subject; every node answers ``Refreshed`` to ``reply_to``."""

    id: str
    reply_to: str
    component: str = ""
    name: str = ""


class Refreshed(Wire, frozen=True, tag="refreshed"):
    """One node's answer to a Refresh: the revision it runs after it (0 = its own file)."""

    id: str
    node: str
    role: str = ""
    revision: int = 0
    ok: bool = True
    error: str = ""


Message = (
    Request
    | Reply
    | StreamStep
    | Credit
    | Cancel
    | Presence
    | DeadLetter
    | AuditEvent
    | CallLog
    | Refresh
    | Refreshed
)
