"""The declarative configuration (TOML), validated into Structs at load.

Config Structs forbid unknown fields, so a typo is an error that names its key path
(``systems.demo.timeout: Expected `float`, got `str```) rather than a silently ignored key.
Environment variables override single keys: ``BUSGATE__GATEWAY__LISTEN=0.0.0.0:8080`` sets
``gateway.listen``; the value is read as a TOML value when it parses as one, else as a string.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from busgate.contracts.paths import refusal

ENV_PREFIX = "BUSGATE__"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


Timeout = Annotated[float, msgspec.Meta(gt=0)]
"""Seconds a call may take, positive. The most specific one set applies: path, channel,
system, then ``gateway.timeout`` (see :meth:`Config.timeout_for`); each may be longer or
shorter than the one it overrides."""


Cidr = Annotated[str, msgspec.Meta(pattern=r"^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$")]
"""An address or network (``10.0.0.0/8``, ``::1``); checked fully when the edge starts."""


class ConfigError(ValueError):
    """The configuration is invalid; the message names the offending key path."""


class Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Base of every config table."""


class Cors(Section, frozen=True):
    """Cross-origin calls from browsers; preflights are answered at the edge.

    ``origins`` are exact (``https://app.example.com``) or ``*`` (any, never with
    ``credentials``); ``origin_patterns`` are regular expressions matched against the whole
    origin (``https://[a-z0-9-]+\\.example\\.com``).
    """

    enabled: bool = True
    origins: tuple[str, ...] = ()
    origin_patterns: tuple[str, ...] = ()
    methods: tuple[str, ...] = METHODS
    headers: tuple[str, ...] = (
        "authorization",
        "content-type",
        "x-request-id",
        "x-csrf-token",
        "x-api-key",
        "last-event-id",
        "if-match",  # CRUD writes conditional on a version (ETag)
        "if-none-match",
    )
    expose_headers: tuple[str, ...] = (
        "x-request-id",
        "x-trace-id",
        "www-authenticate",
        "etag",  # a CRUD document's version, for the browser to send back in If-Match
    )
    credentials: bool = False
    max_age: int = 1800
    """Seconds a browser may cache a preflight answer."""

    def __post_init__(self) -> None:
        if self.credentials and "*" in self.origins:
            raise ValueError("origins: '*' cannot be combined with credentials = true")
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"methods: unknown method(s) {bad}; allowed: {list(METHODS)}")
        for pattern in self.origin_patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"origin_patterns: {pattern!r} is not a regex: {exc}") from None


class Csrf(Section, frozen=True):
    """Double-submit cookie bound to the session: a call authenticated by cookie that
    changes state must send in ``header`` the CSRF token the login set in ``cookie`` -- an
    HMAC of its session id, so a cookie an attacker planted does not pass. Calls with a
    bearer token or an API key are exempt (a browser never adds those on its own)."""

    enabled: bool = False
    cookie: str = "busgate_csrf"
    header: str = "X-CSRF-Token"
    secret: str = ""
    """The HMAC key (``env:NAME`` or ``file:PATH``); empty = derived from each token's
    signing secret or private key."""


class Controllers(Section, frozen=True):
    """Parts of the public API that can be switched off; a switched-off one answers 404
    (``file`` is ``/api/file``, ``edge.files``)."""

    request: bool = True
    auth: bool = True
    control: bool = True
    track: bool = True
    command: bool = True
    file: bool = True
    stream: bool = True


class Gateway(Section, frozen=True):
    id: str = "busgate"
    bus: str = "nats://127.0.0.1:4222"
    """``nats://host:port[,nats://…]`` or ``kafka://host:port[,host:port]``."""
    prefix: str = "busgate"
    listen: str = "127.0.0.1:8080"
    request_id_header: str = "X-Request-Id"
    trace_id_header: str = "X-Trace-Id"
    return_ids: Literal["none", "always", "error"] = "none"
    accept_request_id: bool = False
    accept_trace: bool = False
    max_body: int = 10 * 1024 * 1024
    """Largest request body, bytes; the bus's own message limit may make it smaller (see
    ``bus.base.Bus.body_limit``)."""
    timeout: Timeout = 30.0
    """Deadline of a call, seconds, where no system, channel or path sets one."""
    forward_headers: tuple[str, ...] = (
        "accept",
        "accept-language",
        "content-type",
        "if-match",  # CRUD runners: a write conditional on the version the client read
        "if-none-match",
    )
    stream_wait: float = 10.0
    """Default pause between saga steps when the runner names none, seconds."""
    stream_heartbeat: float = 15.0
    max_streams: int = 10_000
    max_streams_per_client: int = 100
    max_stream_duration: float = 0.0
    """0 = unlimited."""
    idempotency_window: float = 86_400.0
    """Seconds an ``Idempotency-Key`` is remembered (commands, sends and async calls)."""
    stream_buffer: Annotated[int, msgspec.Meta(ge=1)] = 16
    """Steps of one stream the edge takes ahead of its client (the credits it grants)."""
    stream_buffer_bytes: Annotated[int, msgspec.Meta(ge=0)] = 1024 * 1024
    """...and about this many bytes at most (0 = no byte bound): large steps, fewer of them."""
    stream_stall_timeout: float = 30.0
    """Seconds a stream's client may take no data before it is dropped and its saga
    cancelled; 0 = never."""
    header_timeout: float = 10.0
    """Seconds a request head may take from its first byte (a connection's first request:
    from the connection's start); slower clients are disconnected. 0 = no limit."""
    body_timeout: float = 30.0
    """Seconds a request body may pause between reads before the connection is closed.
    0 = no limit."""
    keepalive_timeout: float = 75.0
    """Seconds an idle keep-alive connection stays open (longer than the usual load
    balancer's 60 s, so the balancer closes first)."""
    presence_interval: float = 2.0
    presence_ttl: float = 6.0
    refresh: float = 15.0
    """Seconds between re-reads of the config source (the file; a bus source is watched and
    applied at once); -1 = never. See ``Config.shared``."""
    config_source: Literal["file", "bus"] = "file"
    """``bus``: systems, channels, tokens, services and commands come from the revision
    ``busgate config push`` published on ``bus`` (this file's own until there is one)."""
    control_allow: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    """CIDRs whose callers may use ``/api/control`` (with the admin role as well)."""
    control_role: str = "admin"
    control_token: str = ""
    """The token (``tokens.NAME``) that authenticates ``/api/control`` callers; empty = the
    only token, when there is exactly one."""
    controllers: Controllers = msgspec.field(default_factory=Controllers)
    full_role: str = "gateway"
    """The role a caller of ``/api/request/full/...`` needs to supply origin and identity."""
    cors: Cors = msgspec.field(default_factory=Cors)
    csrf: Csrf = msgspec.field(default_factory=Csrf)
    tls: ServerTls | None = None
    """HTTPS on ``listen`` (see :class:`ServerTls`); None = plain HTTP."""
    trusted_proxies: tuple[Cidr, ...] = ()
    """CIDRs of the proxies whose ``X-Forwarded-For`` / ``Forwarded`` name the client's IP
    (see ``edge.client_ip``); from any other peer the socket's address is the client's."""
    rate_limit: GatewayLimits = msgspec.field(default_factory=lambda: GatewayLimits())
    login_limit: LoginLimit = msgspec.field(default_factory=lambda: LoginLimit())


class RunnerAuth(Section, frozen=True):
    """The adapter authenticates to the runners (OAuth 2 client credentials, RFC 6749
    §4.4): it fetches a token from ``token_url`` with ``client_id`` and ``client_secret``
    (HTTP Basic), keeps it until ``margin`` seconds before it expires, sends it as
    ``Authorization: Bearer``, and fetches a new one once when a runner answers 401."""

    token_url: str
    """Absolute, or a path on the (first) runner's host (``/oauth/token``)."""
    client_id: str
    client_secret: str
    """``env:NAME`` or ``file:PATH`` (or, not recommended, literal)."""
    scope: str = ""
    audience: str = ""
    margin: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    timeout: Timeout = 5.0


class SystemLog(Section, frozen=True):
    """Request and response logs of a system's calls, published by its adapters to
    ``requests`` and ``responses`` (subjects on NATS, topics on Kafka; empty = not logged):
    a ``sample`` share of the calls, bodies redacted (see ``contracts.redaction``) and cut
    to ``max_body`` bytes (0 = no bodies)."""

    requests: str = ""
    responses: str = ""
    sample: Annotated[float, msgspec.Meta(ge=0, le=1)] = 1.0
    max_body: Annotated[int, msgspec.Meta(ge=0)] = 4096


class RpcSystem(Section, frozen=True, tag="rpc", tag_field="type"):
    base_url: str = ""
    """The runner; with ``base_urls``, the first of them (set for you)."""
    timeout: Timeout | None = None
    """Overrides ``gateway.timeout`` for calls of this system."""
    max_connections: int = 100
    headers: dict[str, str] = {}
    base_urls: tuple[str, ...] = ()
    """Several runners of this system, called in turn (round robin). One that refuses a
    connection is skipped for ``eject_time`` and the call goes to the next; one that
    answers 5xx is skipped for ``eject_time`` too (that call's answer stands)."""
    eject_time: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    """Seconds a failing runner of ``base_urls`` is left out before it is tried again."""
    max_answer: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Largest runner answer held in memory, bytes (0 = no cap): beyond it the call fails
    (502 ``reply_too_large``) without reading the rest."""
    cookies: dict[str, str] = {}
    """Cookies sent with every runner call, as ``headers`` are."""
    pass_cookies: bool = False
    """Let the runners' ``Set-Cookie`` headers reach the client (else they are dropped)."""
    auth: RunnerAuth | None = None
    log: SystemLog | None = None
    tls: ClientTls | None = None
    """How to reach ``https://`` runners (CA, client certificate); needs every runner
    (``base_url`` or all of ``base_urls``) on ``https://``."""
    schema: str = ""
    """A JSON file (an OpenAPI 3.1 document of this system's sagas) that its adapters read and
    share on the bus; the edges merge it into ``/api/openapi.json`` (``edge.contributed``)."""
    schema_url: str = ""
    """The same document fetched from the runner by its adapters: a URL, or a path on the
    runner (``/api/demo/openapi.json``, resolved against ``base_url``)."""

    def __post_init__(self) -> None:
        if self.schema and self.schema_url:
            raise ValueError("schema: set schema (a file) or schema_url (the runner's), not both")
        if not self.base_url and not self.base_urls:
            raise ValueError("base_url: set base_url, or base_urls for several runners")
        if self.base_url and self.base_urls and self.base_url != self.base_urls[0]:
            raise ValueError("base_url: with base_urls, leave it out (the first is used)")
        if len(set(self.base_urls)) != len(self.base_urls):
            raise ValueError("base_urls: a runner is listed twice")
        if self.base_urls and not self.base_url:
            msgspec.structs.force_setattr(self, "base_url", self.base_urls[0])
        if self.tls is not None and not all(u.startswith("https://") for u in self.runners):
            key = "base_urls" if self.base_urls else "base_url"
            raise ValueError(f"tls: set only with https:// runners (see {key})")

    @property
    def runners(self) -> tuple[str, ...]:
        return self.base_urls or (self.base_url,)


class CrudSystem(Section, frozen=True, tag="crud", tag_field="type"):
    """A CRUD runner over HTTP: ``/api/request/CHANNEL/STATE/ID`` → ``BASE/STATE/ID`` with
    the client's method, query and body as they are (see ``adapters.crud``)."""

    base_url: str
    timeout: Timeout | None = None
    max_connections: int = 100
    headers: dict[str, str] = {}

    def as_rpc(self) -> RpcSystem:
        """The HTTP settings it shares with an RPC system (one pooled client for both)."""
        return RpcSystem(
            base_url=self.base_url,
            timeout=self.timeout,
            max_connections=self.max_connections,
            headers=self.headers,
        )


class RsocketSystem(Section, frozen=True, tag="rsocket", tag_field="type"):
    """RSocket runners (see ``adapters.rsocket``): ``tcp`` to each of ``hosts`` (``host`` or
    ``host:port``, port 7000 by default), or ``websocket`` to each of ``urls``; requests are
    spread over the connected ones, a lost connection is retried ``retry_attempts`` times
    ``retry_duration`` seconds apart, then again at the next call."""

    protocol: Literal["tcp", "websocket"] = "tcp"
    hosts: tuple[str, ...] = ("127.0.0.1:7000",)
    urls: tuple[str, ...] = ()
    timeout: Timeout | None = None
    retry_attempts: Annotated[int, msgspec.Meta(ge=0)] = 3
    retry_duration: Annotated[float, msgspec.Meta(ge=0)] = 1.0

    def __post_init__(self) -> None:
        if self.protocol == "websocket" and not self.urls:
            raise ValueError("urls: a websocket system needs at least one ws:// URL")
        if self.protocol == "tcp" and not self.hosts:
            raise ValueError("hosts: a tcp system needs at least one host")


class BusSystem(Section, frozen=True, tag="bus", tag_field="type"):
    """A bus-native system: no adapter; its runner (``busgate.runners.kit``) consumes
    ``PREFIX.req.NAME`` itself and replies on the bus, one hop fewer."""

    timeout: Timeout | None = None
    """Overrides ``gateway.timeout`` for calls of this system."""


System = RpcSystem | CrudSystem | RsocketSystem | BusSystem


Algorithm = Literal["HS256", "HS384", "HS512", "RS256", "ES256", "EdDSA"]
ASYMMETRIC = ("RS256", "ES256", "EdDSA")
RESERVED_CLAIMS = frozenset({"iss", "aud", "exp", "nbf", "iat", "jti", "sid", "typ", "rti"})
_PATH_KEY = re.compile(r"^(\*|[^*]+/\*|[^*]*)$")


class Claim(Section, frozen=True):
    """One claim of the tokens a provider's answer turns into.

    Exactly one of ``source`` (a dotted path into the provider's JSON answer), ``value`` (a
    constant) or ``special`` (``session_id``, ``client_ip``, ``user_agent``). ``sub`` is the
    subject and ``roles`` the roles. ``remove`` keeps the claim out of the token, out of the
    identity runners see, and strips its source from the answer returned with ``thru``.
    """

    name: str
    type: Literal["string", "int", "float", "bool", "list"] = "string"
    source: str = ""
    value: str | int | float | bool | None = None
    special: Literal["", "session_id", "client_ip", "user_agent"] = ""
    remove: bool = False
    required: bool = False

    def __post_init__(self) -> None:
        given = sum((bool(self.source), self.value is not None, bool(self.special)))
        if given != 1:
            raise ValueError(f"claim {self.name!r}: give exactly one of source, value, special")
        if self.name in RESERVED_CLAIMS:
            raise ValueError(f"claim {self.name!r} is reserved; choose another name")


class TokenCookies(Section, frozen=True):
    """Cookies set when an auth call asks for them (``cookie=true``)."""

    access: str = "busgate_access"
    refresh: str = "busgate_refresh"
    domain: str = ""
    same_site: Literal["Strict", "Lax", "None"] = "Strict"
    http_only: bool = True
    secure: bool = True
    path: str = "/api"
    refresh_path: str = "/api/auth/refresh"


class ApiKey(Section, frozen=True):
    """A server-to-server caller. Only the key's hash is stored: ``sha256:<64 hex>`` (keys
    are long random strings, so a fast hash is enough and keeps the check a dict lookup)."""

    hash: str
    subject: str = ""
    """Defaults to the key's name."""
    roles: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", self.hash):
            raise ValueError("hash: expected 'sha256:' followed by 64 lowercase hex digits")


class Verifiable(Section, frozen=True):
    """Also accept tokens of an external identity provider, verified against its JWKS."""

    jwks_url: str
    issuer: str = ""
    audience: str = ""
    algorithms: tuple[Literal["RS256", "ES256", "EdDSA"], ...] = ("RS256",)
    subject_claim: str = "sub"
    roles_claim: str = "roles"
    """Dotted path (``realm_access.roles``)."""
    cache_ttl: float = 3600.0
    """Seconds the key set is kept before it is fetched again."""
    refetch_interval: float = 10.0
    """At most one fetch per interval when a token names an unknown ``kid``."""
    timeout: float = 5.0


class Token(Section, frozen=True):
    """How tokens are issued and checked. Secrets and keys are a literal, ``env:NAME`` or
    ``file:PATH``; keep them out of the file with the last two."""

    header: str = "Authorization"
    """Where a bearer token comes (``Bearer …``); its cookie is ``cookies.access``."""
    api_key_header: str = ""
    """Header of server-to-server API keys (``X-Api-Key``); empty = API keys off."""
    expiration: int = 900
    """Lifetime of an access token, seconds."""
    grace: int = 0
    """A cookie-borne access token this close to expiry is renewed on the response."""
    refresh_expiration: int = 86_400
    long_expiration: int = 30 * 86_400
    """Refresh lifetime when the login asked ``remember=true``."""
    session_max_age: int = 30 * 86_400
    """Absolute lifetime of a session, seconds from its login: past it, refresh is refused
    (however often it was refreshed) and the user logs in again."""
    algorithm: Algorithm = "HS512"
    secret: str = ""
    private_key: str = ""
    public_key: str = ""
    key_id: str = ""
    """``kid`` of the tokens issued here; defaults to the token's name."""
    issuer: str = "busgate"
    audience: str = "busgate"
    leeway: int = 0
    """Clock skew allowed on ``exp``/``nbf``, seconds."""
    can_ignore: bool = False
    """A missing or invalid token makes the call anonymous instead of failing it."""
    max_size: int = 4096
    """Longer tokens are refused before any parsing (a cookie holds 4096 bytes at most)."""
    cookies: TokenCookies = msgspec.field(default_factory=TokenCookies)
    claims: tuple[Claim, ...] = (
        Claim(name="sub", source="username", required=True),
        Claim(name="roles", type="list", source="roles"),
    )
    verifiable: Verifiable | None = None
    api_keys: dict[str, ApiKey] = {}
    encryption: Literal["", "A256GCM"] = ""
    """Issue JWE-wrapped tokens (claims unreadable by clients); empty = signed only."""
    encryption_key: str = ""
    """32 random bytes, base64url-encoded: ``env:NAME`` or ``file:PATH``."""

    def __post_init__(self) -> None:
        if self.algorithm in ASYMMETRIC:
            if not self.private_key or not self.public_key:
                raise ValueError(f"algorithm {self.algorithm}: set private_key and public_key")
        elif not self.secret:
            raise ValueError(f"algorithm {self.algorithm}: set secret")
        if self.encryption and not self.encryption_key:
            raise ValueError("encryption: set encryption_key (env:NAME or file:PATH)")
        if not any(c.name == "sub" for c in self.claims):
            raise ValueError("claims: one claim must be named 'sub' (the subject)")
        for name in (
            "expiration",
            "refresh_expiration",
            "long_expiration",
            "session_max_age",
            "max_size",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be positive")


class Limit(Section, frozen=True):
    """``limit`` calls per ``period`` seconds (-1 = unlimited); ``max_wait`` > 0 queues a
    caller up to that many seconds for a permit instead of answering 429 at once."""

    limit: Annotated[int, msgspec.Meta(ge=-1)]
    period: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    max_wait: Annotated[float, msgspec.Meta(ge=0)] = 0.0

    @property
    def unlimited(self) -> bool:
        return self.limit < 0


class GatewayLimits(Section, frozen=True):
    """``[gateway.rate_limit]``: defaults for every channel, per authenticated subject and
    per client IP (anonymous callers). ``sync_interval``: seconds between two exchanges of
    counts with the other edges over the bus (``edge.limits_sync``)."""

    user: Limit | None = None
    ip: Limit | None = None
    sync_interval: Annotated[float, msgspec.Meta(gt=0)] = 0.05


class LoginLimit(Section, frozen=True):
    """Attempts at ``/api/auth/login`` per client IP and per username: a brute force is
    slowed (429), a real user is not locked out for longer than a period. The IP's limit is
    the looser one: many users may share an address (an office, a carrier's NAT)."""

    enabled: bool = True
    ip: Limit = Limit(limit=60, period=60)
    username: Limit = Limit(limit=10, period=60)


class Bulkhead(Section, frozen=True):
    """At most ``max_concurrent`` calls in flight per channel/path on one edge (-1 = no
    bound); past it a call waits up to ``max_wait`` seconds, then 503 ``bulkhead_full``."""

    max_concurrent: Annotated[int, msgspec.Meta(ge=-1)] = 200
    max_wait: Annotated[float, msgspec.Meta(ge=0)] = 0.0

    def __post_init__(self) -> None:
        if self.max_concurrent == 0:
            raise ValueError("max_concurrent: at least 1, or -1 for no bound")


class Breaker(Section, frozen=True):
    """A circuit breaker per channel/path on each edge, over the last ``size`` calls
    (``window = "count"``) or the last ``size`` seconds (``"time"``). It opens when at least
    ``min_calls`` were seen and ``failure_rate`` % of them failed (5xx, timeouts, no adapter)
    or ``slow_rate`` % took longer than ``slow_call`` seconds (0 = no slow-call rule); open,
    it answers 503 ``circuit_open`` for ``open_wait`` seconds, then lets ``half_open_calls``
    through: all succeed -> closed, one fails -> open again."""

    window: Literal["count", "time"] = "count"
    size: Annotated[int, msgspec.Meta(ge=1)] = 50
    failure_rate: Annotated[float, msgspec.Meta(gt=0, le=100)] = 50.0
    min_calls: Annotated[int, msgspec.Meta(ge=1)] = 20
    slow_call: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    slow_rate: Annotated[float, msgspec.Meta(gt=0, le=100)] = 100.0
    open_wait: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    half_open_calls: Annotated[int, msgspec.Meta(ge=1)] = 5


class Retry(Section, frozen=True):
    """Retries of a failed call: the adapter retries the runner call (``on_status``: the
    runner's statuses, ``on_codes``: error codes such as ``upstream_unreachable``); the edge
    retries only calls no adapter answered (``no_adapter``, ``bus_unavailable`` in
    ``on_codes``). Only ``methods`` are retried (idempotent ones by default); the pause is
    ``wait * backoff ** (n - 1)`` seconds with ±``jitter`` (a share) and never runs past the
    call's deadline."""

    attempts: Annotated[int, msgspec.Meta(ge=1)] = 3
    wait: Annotated[float, msgspec.Meta(ge=0)] = 0.1
    backoff: Annotated[float, msgspec.Meta(ge=1)] = 2.0
    jitter: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.2
    on_status: tuple[int, ...] = (502, 503, 504)
    on_codes: tuple[str, ...] = ("upstream_unreachable", "no_adapter")
    methods: tuple[str, ...] = ("GET", "PUT", "DELETE")

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"methods: unknown method(s) {bad}; allowed: {list(METHODS)}")


class Resilience(Section, frozen=True):
    """``[channels.NAME.resilience]`` and ``[channels.NAME.paths."KEY".resilience]``: each
    part set on the most specific key matching a path wins, then the channel's, then (for
    ``user`` and ``ip``) ``[gateway.rate_limit]``. ``rate`` counts the calls of all callers."""

    rate: Limit | None = None
    user: Limit | None = None
    ip: Limit | None = None
    bulkhead: Bulkhead | None = None
    breaker: Breaker | None = None
    retry: Retry | None = None


class PathRule(Section, frozen=True):
    """Access to the paths a key matches: ``*`` (all), ``prefix/*`` (below prefix) or an
    exact path; the most specific key wins. ``roles`` maps a method (or ``*``) to the roles
    of which the caller needs one; no entry, ``[]`` or ``["*"]`` = any authenticated caller.
    A ``disabled`` path answers 404, as if it did not exist."""

    public: bool = False
    disabled: bool = False
    roles: dict[str, tuple[str, ...]] = {}
    timeout: Timeout | None = None
    """Overrides the channel's (and system's) timeout for the paths the key matches. A key
    is one whole rule: a key set only for a timeout still decides access to its paths (any
    authenticated caller on a channel with ``auth``), so repeat ``public`` or ``roles``."""
    response_headers: ResponseHeaders = {}
    """Added to the answers of these paths; see :data:`ResponseHeaders`."""
    errors: ErrorDetail | None = None
    """How much of an error callers of these paths see; None = the channel's."""
    audit: bool = False
    """Publish an :class:`~busgate.contracts.wire.AuditEvent` per call to the audit
    subject/topic (NATS ``PREFIX.audit.CHANNEL``, Kafka ``PREFIX.audit``)."""
    audit_body: bool = False
    """...with the request body (secret-looking keys of a JSON object redacted)."""
    resilience: Resilience | None = None
    """Rate limits, bulkhead, breaker and retries for the paths the key matches (the same
    caveat as ``timeout``)."""

    def __post_init__(self) -> None:
        bad = [m for m in self.roles if m != "*" and m not in METHODS]
        if bad:
            raise ValueError(f"roles: unknown method(s) {bad}; use {list(METHODS)} or '*'")
        check_response_headers(self.response_headers)


ErrorDetail = Literal["full", "code", "none"]
"""What a caller sees of an error: ``full`` = code and message, ``code`` = the code only,
``none`` = the status only (an empty body). Logs and traces always keep the message."""

ResponseHeaders = dict[str, str | dict[str, str]]
"""Headers added to answers: ``{"Cache-Control" = "no-store"}``; a method name holds the ones
for that method only (``GET = {"Cache-Control" = "max-age=60"}``). Per header name the most
specific wins: path and method, path, channel and method, channel."""

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_ALIAS_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def check_response_headers(headers: ResponseHeaders) -> None:
    for name, value in headers.items():
        table = value if isinstance(value, dict) else {name: value}
        if isinstance(value, dict) and name not in METHODS:
            raise ValueError(f"response_headers.{name}: a table is only allowed under a method")
        for header, text in table.items():
            if not _HEADER_NAME.fullmatch(header):
                raise ValueError(f"response_headers: {header!r} is not a header name")
            if not (text.isascii() and text.isprintable()):
                raise ValueError(f"response_headers.{header}: visible ASCII only")


def alias_key_refusal(key: str) -> str | None:
    """Why ``key`` is not a usable alias path (``v1/orders/{id}``), or None."""
    names = _ALIAS_PARAM.findall(key)
    if len(names) != len(set(names)):
        return "a parameter name appears twice"
    for segment in key.split("/"):
        if ("{" in segment or "}" in segment) and not _ALIAS_PARAM.fullmatch(segment):
            return "a parameter is a whole segment: {name}"
    if "*" in key or not key:
        return "use an exact path with {name} parameters (no wildcards)"
    return refusal(_ALIAS_PARAM.sub("p", key))


class Alias(Section, frozen=True):
    """A public path of a channel that calls ``target``, another path of the same channel.

    Path parameters (``{id}``) land in the payload under their names. ``payload`` and
    ``meta`` map keys to JMESPath expressions over ``headers`` (lower-case names;
    ``headers.X-Tenant`` may be written as is), ``query``, ``path`` (the parameters),
    ``identity`` (``subject``, ``roles``, ``claims``) and ``origin``; what they give
    overrides what the client sent under the same key. The access rules of the alias path
    *and* of the target apply: an alias never opens a path its target would refuse.
    """

    target: str
    methods: tuple[str, ...] = METHODS
    payload: dict[str, str] = {}
    meta: dict[str, str] = {}

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"methods: unknown method(s) {bad}; allowed: {list(METHODS)}")


class Channel(Section, frozen=True):
    system: str
    methods: tuple[str, ...] = METHODS
    timeout: Timeout | None = None
    """Overrides the system's timeout for calls on this channel, longer or shorter."""
    auth: str | None = None
    """The token (``tokens.NAME``) calls on this channel are checked against; for the auth
    API, the token it issues. None = every path is public."""
    paths: dict[str, PathRule] = {}
    aliases: dict[str, Alias] = {}
    """Public paths (``v1/orders/{id}``) that call another path of this channel."""
    response_headers: ResponseHeaders = {}
    errors: ErrorDetail = "full"
    resilience: Resilience | None = None

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"unknown method(s) {bad}; allowed: {list(METHODS)}")
        check_response_headers(self.response_headers)
        for key, alias in self.aliases.items():
            if (why := alias_key_refusal(key)) is not None:
                raise ValueError(f'aliases."{key}": {why}')
            if (why := refusal(alias.target)) is not None or not alias.target:
                raise ValueError(f'aliases."{key}".target: {why or "empty"}')
        for key, rule in self.paths.items():
            if not _PATH_KEY.match(key):
                raise ValueError(f'paths."{key}": use "*", "prefix/*" or an exact path')
            if rule.roles and self.auth is None:
                raise ValueError(f'paths."{key}".roles: set auth (a token) to check roles')


class CommandRule(Section, frozen=True):
    """Who may issue the commands a ``[commands.paths]`` key matches (``*``, ``prefix/*`` or
    exact; the most specific wins, as for channel paths). ``roles``: one of them is needed;
    ``[]`` or ``["*"]`` = any authenticated caller."""

    public: bool = False
    disabled: bool = False
    roles: tuple[str, ...] = ()


class Commands(Section, frozen=True):
    """``POST /api/command/{path}``: durable, acknowledged commands for one system."""

    system: str
    """The system whose runner executes the commands (its adapters consume them)."""
    token: str | None = None
    """The token (``tokens.NAME``) that guards them; None = anyone may issue commands."""
    paths: dict[str, CommandRule] = {}
    admin_role: str = "admin"
    """A caller with this role may read the status of anybody's command."""
    max_attempts: int = 5
    """Runner calls per command before it goes to the dead letters."""
    backoff: float = 0.5
    """Seconds before the second attempt; doubled for each further one."""
    max_backoff: float = 30.0
    ack_wait: float = 30.0
    """NATS: seconds JetStream waits for an adapter's ack before it redelivers (the adapter
    extends it while the runner works, so this bounds how soon a crash is noticed)."""
    concurrency: int = 64
    """Commands one adapter executes at once."""
    retention: float = 86_400.0
    """Seconds a command's status is kept."""

    def __post_init__(self) -> None:
        for key in self.paths:
            if not _PATH_KEY.match(key):
                raise ValueError(f'paths."{key}": use "*", "prefix/*" or an exact path')
        if self.max_attempts < 1:
            raise ValueError("max_attempts: must be at least 1")
        if self.concurrency < 1:
            raise ValueError("concurrency: must be at least 1")


class Service(Section, frozen=True):
    """A direct gateway integration: ``POST /api/send/{service}/{topic}/{key}`` (ad hoc
    messages straight to a topic; type ``""``, ``nats`` or ``kafka``), or ``type = "file"``:
    ``/api/file/{service}`` over a store (``edge.files``).

    ``producer`` passes through to the client: aiokafka producer settings on Kafka
    (``acks``, ``compression_type``, ``linger_ms``, …; ``acks`` defaults to ``all``). On NATS
    ``jetstream = true`` publishes to JetStream and waits for its ack (``stream`` with
    ``stream_subjects`` has busgate create that stream); else a core publish, acknowledged
    by a flush.

    A file service stores under ``url``, any fsspec URL (``file:///srv/files``,
    ``memory://``, ``s3://bucket/prefix`` with ``busgate[s3]``; ``options`` are the store's
    fsspec storage options, e.g. ``endpoint_url``; credentials come from the store's usual
    environment, never this file). ``scope = "user"`` gives each caller a folder of their
    own (their token's subject; ``anonymous`` for callers without one, when ``anonymous``
    allows them); ``shared`` is one folder for everyone. ``token`` and ``roles`` check
    callers as for sends; ``max_size`` bounds one file."""

    type: Literal["", "nats", "kafka", "file"] = ""
    """Empty = the kind of ``url`` (or of the gateway's bus)."""
    url: str = ""
    """The broker; empty = the gateway's bus (``gateway.bus``). For ``file``: the store."""
    topics: tuple[str, ...] = ()
    """Glob patterns of the topics/subjects callers may send to (``orders.*``)."""
    token: str | None = None
    roles: tuple[str, ...] = ()
    jetstream: bool = False
    stream: str = ""
    stream_subjects: tuple[str, ...] = ()
    producer: dict[str, Any] = {}
    max_body: int = 0
    """0 = ``gateway.max_body``."""
    timeout: float = 5.0
    """Seconds to wait for the broker's ack."""
    scope: Literal["user", "shared"] = "user"
    anonymous: bool = False
    """Files: callers without credentials may use the service, as ``anonymous``."""
    max_size: int = 1024**3
    """Files: the largest file, bytes (its own limit: ``gateway.max_body`` does not apply)."""
    options: dict[str, Any] = {}
    """Files: fsspec storage options of the store."""

    def __post_init__(self) -> None:
        if self.type == "file":
            self._check_file()
            return
        if self.options or self.anonymous or self.scope != "user":
            raise ValueError('options, anonymous, scope: only for type = "file" services')
        if not self.topics:
            raise ValueError("topics: list the topic patterns this service may send to")
        if self.stream and not self.jetstream:
            raise ValueError("stream: only with jetstream = true")
        if self.producer and self.type == "nats":
            raise ValueError("producer: settings pass through to Kafka producers only")
        if self.jetstream and self.type == "kafka":
            raise ValueError("jetstream: only for NATS services")

    def _check_file(self) -> None:
        if not self.url or "://" not in self.url:
            raise ValueError(
                "url: a file service needs its store's URL (file:///path, memory://, s3://…)"
            )
        if self.topics or self.jetstream or self.stream or self.producer or self.max_body:
            raise ValueError(
                "topics, jetstream, stream, producer, max_body: not for file services"
                " (max_size bounds a file)"
            )
        if self.max_size <= 0:
            raise ValueError("max_size: must be a positive number of bytes")
        if self.token is None and not self.anonymous:
            raise ValueError("token: a file service needs a token, or anonymous = true")

    @property
    def is_file(self) -> bool:
        return self.type == "file"


class Telemetry(Section, frozen=True):
    """Tracing and metrics (see ``bus.tracing``, ``edge.observe``, ``adapters.observe``).

    ``sampling`` is the share of calls traced (0 = off: no span is ever made, and the request
    path pays one ``if``); a call whose client sent a sampled ``traceparent`` (with
    ``gateway.accept_trace``) follows the client's decision. Finished spans go to
    ``otlp_endpoint`` (OTLP over HTTP, e.g. ``http://collector:4318/v1/traces``) when set,
    and onto the bus when ``bus_export`` is on, kept there ``bus_max_age`` seconds (at most
    ``bus_max_bytes``) for ``busgate trace`` (on NATS in a JetStream stream in the server's
    memory by default, ``bus_storage = "file"`` to keep them across a restart of the server).
    ``metrics`` serves ``/metrics`` on the edge (adapters serve it with ``--metrics-listen``).
    """

    sampling: float = 0.0
    edge_service: str = "busgate-edge"
    adapter_service: str = "busgate-adapter"
    runner_service: str = "busgate-runner"
    """Bus-native runners (``busgate.runners.kit``) given this config trace as this."""
    otlp_endpoint: str = ""
    bus_export: bool = True
    bus_max_age: float = 3600.0
    bus_max_bytes: int = 512 * 1024 * 1024
    """At most this much of them is kept on the bus (oldest dropped first): a fully sampled
    busy gateway fills an hour quickly, and on NATS they are in the server's memory."""
    bus_storage: Literal["memory", "file"] = "memory"
    metrics: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.sampling <= 1.0:
            raise ValueError("sampling: a ratio between 0 and 1")
        if self.bus_max_age <= 0:
            raise ValueError("bus_max_age: must be positive")
        if self.bus_max_bytes <= 0:
            raise ValueError("bus_max_bytes: must be positive")
        if self.otlp_endpoint and not self.otlp_endpoint.startswith(("http://", "https://")):
            raise ValueError("otlp_endpoint: an http:// or https:// URL (OTLP over HTTP)")

    @property
    def tracing(self) -> bool:
        return self.sampling > 0 and (self.bus_export or bool(self.otlp_endpoint))


class TlsIdentity(Section, frozen=True):
    """How a verified client certificate becomes the caller's identity, as a token would:
    the subject is the certificate's common name (``cn``) or its first URI SAN (``uri``,
    e.g. a SPIFFE id); ``roles`` maps subjects to their roles, others get ``default_roles``."""

    subject: Literal["cn", "uri"] = "cn"
    roles: dict[str, tuple[str, ...]] = {}
    default_roles: tuple[str, ...] = ()


class ServerTls(Section, frozen=True):
    """``[gateway.tls]``: the edge's certificate, rotated at runtime (see ``edge.tls_server``).

    ``source``: ``files`` (``cert`` and ``key``, PEM), ``folder`` (``cert.pem`` + ``key.pem``,
    or ``tls.crt`` + ``tls.key`` as a Kubernetes secret mounts them) or ``self-signed``
    (made at start for ``self_signed_hosts``, renewed ``renew_before`` seconds before it
    expires) or ``bus`` (the bus's store, ``busgate cert push``). The files (or the store's
    view) are read every ``poll`` seconds; a changed certificate is served to
    new connections ``grace`` seconds later (clients can trust it first); open connections
    keep theirs. ``client_auth`` asks for client certificates signed by ``ca``.
    """

    source: Literal["files", "folder", "self-signed", "bus"] = "files"
    name: str = "default"
    """``source = "bus"``: the name the certificate was pushed under (``busgate cert push``)."""
    cert: str = ""
    key: str = ""
    folder: str = ""
    ca: str = ""
    """PEM bundle of the CAs that sign client certificates."""
    client_auth: Literal["none", "optional", "require"] = "none"
    min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"
    ciphers: str = ""
    """OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are OpenSSL's); empty = Python's."""
    poll: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    grace: Annotated[float, msgspec.Meta(ge=0)] = 11.0
    self_signed_hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
    self_signed_lifetime: Annotated[float, msgspec.Meta(gt=0)] = 7 * 86_400.0
    renew_before: Annotated[float, msgspec.Meta(ge=0)] = 86_400.0
    identity: TlsIdentity = msgspec.field(default_factory=TlsIdentity)

    def __post_init__(self) -> None:
        if self.source == "files" and not (self.cert and self.key):
            raise ValueError("source 'files': set cert and key (PEM paths)")
        if self.source == "folder" and not self.folder:
            raise ValueError("source 'folder': set folder")
        if self.client_auth != "none" and not self.ca:
            raise ValueError(f"client_auth {self.client_auth!r}: set ca (the clients' CAs)")
        if self.source == "self-signed" and self.renew_before >= self.self_signed_lifetime:
            raise ValueError("renew_before: must be shorter than self_signed_lifetime")


class ClientTls(Section, frozen=True):
    """TLS to a runner: ``ca`` verifies it (empty = the system's trust store); ``cert`` and
    ``key`` are the client certificate for mTLS, re-read every ``poll`` seconds and used for
    new connections once they change."""

    ca: str = ""
    cert: str = ""
    key: str = ""
    poll: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"

    def __post_init__(self) -> None:
        if bool(self.cert) != bool(self.key):
            raise ValueError("cert and key: set both (a client certificate) or neither")


class Config(Section, frozen=True):
    gateway: Gateway = msgspec.field(default_factory=Gateway)
    telemetry: Telemetry = msgspec.field(default_factory=Telemetry)
    systems: dict[str, System] = {}
    channels: dict[str, Channel] = {}
    tokens: dict[str, Token] = {}
    commands: Commands | None = None
    services: dict[str, Service] = {}

    def __post_init__(self) -> None:
        self._check_commands_and_services()
        for name, ch in self.channels.items():
            if ch.system not in self.systems:
                raise ValueError(
                    f"channels.{name}.system: unknown system {ch.system!r}; "
                    f"known: {sorted(self.systems)}"
                )
            if ch.auth is not None and ch.auth not in self.tokens:
                raise ValueError(
                    f"channels.{name}.auth: unknown token {ch.auth!r}; known: {sorted(self.tokens)}"
                )

    def _check_commands_and_services(self) -> None:
        if self.commands is not None:
            if self.commands.system not in self.systems:
                raise ValueError(
                    f"commands.system: unknown system {self.commands.system!r}; "
                    f"known: {sorted(self.systems)}"
                )
            if isinstance(self.systems[self.commands.system], BusSystem):
                raise ValueError(
                    f"commands.system: system {self.commands.system!r} is bus-native; commands"
                    " are executed by an adapter, so name a system that has one"
                )
            if self.commands.token is not None and self.commands.token not in self.tokens:
                raise ValueError(f"commands.token: unknown token {self.commands.token!r}")
        for name, service in self.services.items():
            if service.token is not None and service.token not in self.tokens:
                raise ValueError(f"services.{name}.token: unknown token {service.token!r}")

    @property
    def senders(self) -> dict[str, Service]:
        """The services that send messages (every one but the file services)."""
        return {name: s for name, s in self.services.items() if not s.is_file}

    @property
    def file_services(self) -> dict[str, Service]:
        return {name: s for name, s in self.services.items() if s.is_file}

    def timeout_for(self, channel: str, path: str = "") -> float:
        """The timeout of a call on ``channel`` for ``path``: the most specific one set of
        the path's rules, the channel, its system and the gateway."""
        ch = self.channels[channel]
        if ch.paths and (found := path_timeout(ch.paths, path)) is not None:
            return found
        return ch.timeout or self.systems[ch.system].timeout or self.gateway.timeout


SHARED = ("systems", "channels", "tokens", "services", "commands")
"""What a refresh changes on a running node; ``gateway`` and ``telemetry`` stay the node's
own (its bus, listen address and id cannot change under it)."""


def with_shared(node: Config, shared: Config) -> Config:
    """``node``'s gateway and telemetry with ``shared``'s systems, channels, tokens, services
    and commands, checked again as a whole (a revision may drop what another refers to)."""
    try:
        return Config(
            gateway=node.gateway,
            telemetry=node.telemetry,
            **{name: getattr(shared, name) for name in SHARED},
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def loads(text: str, env: Mapping[str, str] | None = None) -> Config:
    """Validate TOML text (a pushed revision) as ``load`` does a file."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(exc)) from None
    return parse(apply_env(raw, os.environ if env is None else env))


def path_timeout(paths: Mapping[str, PathRule], path: str) -> float | None:
    """The timeout of the most specific key of ``paths`` that matches ``path`` and sets one
    (an exact path, then the longest ``prefix/*``, then ``*``), as for access rules."""
    path = path.strip("/")
    best: float | None = None
    rank = -1
    for key, rule in paths.items():
        if rule.timeout is None:
            continue
        if key == "*":
            this = 0
        elif key.endswith("/*"):
            prefix = key[:-2].strip("/")
            if path != prefix and not path.startswith(prefix + "/"):
                continue
            this = 1 + len(prefix)
        elif key.strip("/") == path:
            this = 1 << 30
        else:
            continue
        if this > rank:
            best, rank = rule.timeout, this
    return best


_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def _split(message: str) -> tuple[str, str]:
    """Split msgspec's ``... - at `$.a.b[1]``` into (``a.b[1]``, ``...``)."""
    m = _PATH.search(message)
    if not m:
        return "", message
    return m.group("path").lstrip("."), message[: m.start()]


def _error(*parts: str, message: str) -> ConfigError:
    path = ".".join(p for p in parts if p)
    return ConfigError(f"{path}: {message}" if path else message)


def apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in key[len(ENV_PREFIX) :].split("__") if p]
        if not parts:
            continue
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        try:
            node[parts[-1]] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            node[parts[-1]] = value
    return raw


def _named_tables() -> dict[str, Any]:
    """Tables keyed by user-chosen names; msgspec reports their keys only as ``[...]``."""
    return {
        f.name: f.type.__args__[1]
        for f in msgspec.structs.fields(Config)
        if getattr(f.type, "__origin__", None) is dict
    }


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else f'"{name}"'


def _check(raw: Any, kind: Any, parts: list[str]) -> None:
    """Validate ``raw`` as ``kind``; on failure look into its named sub-tables first, so that
    an error names ``channels.secure.paths."admin/*".roles`` rather than ``paths[...]``."""
    try:
        msgspec.convert(raw, kind)
        return
    except msgspec.ValidationError as exc:
        error = exc
    if isinstance(raw, dict) and isinstance(kind, type) and issubclass(kind, msgspec.Struct):
        for f in msgspec.structs.fields(kind):
            sub = raw.get(f.encode_name)
            if getattr(f.type, "__origin__", None) is dict and isinstance(sub, dict):
                for name, entry in sub.items():
                    _check(entry, f.type.__args__[1], [*parts, f.name, _key(name)])
    path, message = _split(str(error))
    raise _error(*parts, path, message=message) from None


def parse(raw: dict[str, Any]) -> Config:
    # Entries of named tables are validated one by one first, so that an error names
    # ``systems.demo`` rather than ``systems[...]``.
    for table, entry_type in _named_tables().items():
        entries = raw.get(table)
        if not isinstance(entries, dict):
            continue
        for name, entry in entries.items():
            _check(entry, entry_type, [table, _key(name)])
    try:
        return msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        path, message = _split(str(exc))
        raise _error(path, message=message) from None


def load(path: str | Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Read a TOML file (or nothing), apply environment overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return parse(apply_env(raw, os.environ if env is None else env))
