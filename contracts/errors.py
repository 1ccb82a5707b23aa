"""busgate's error hierarchy: each class knows its HTTP status and its wire form.

Adapters raise these; they cross the bus as :class:`contracts.wire.Error`; the edge maps
them to JSON responses in exactly one place (``edge.middleware.errors``).
"""

from __future__ import annotations

from busgate.contracts.wire import Error


class BusgateError(Exception):
    status: int = 500
    code: str = "internal"
    retryable: bool = False

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after

    def to_wire(self) -> Error:
        return Error(
            code=self.code, message=self.message, status=self.status, retryable=self.retryable
        )


class BadRequest(BusgateError):
    status, code = 400, "bad_request"


class Unauthorized(BusgateError):
    status, code = 401, "unauthorized"


class Forbidden(BusgateError):
    status, code = 403, "forbidden"


class NotFound(BusgateError):
    status, code = 404, "not_found"


class MethodNotAllowed(BusgateError):
    status, code = 405, "method_not_allowed"


class Conflict(BusgateError):
    """The same ``Idempotency-Key`` is still being handled by an earlier call."""

    status, code, retryable = 409, "conflict", True


class FileConflict(BusgateError):
    """A file where a folder is, or the reverse (``edge.files``)."""

    status, code = 409, "file_conflict"


class RangeNotSatisfiable(BusgateError):
    """A download's ``Range`` lies outside the file."""

    status, code = 416, "range_not_satisfiable"


class IdempotencyKeyReused(BusgateError):
    """The same ``Idempotency-Key`` came with another request body."""

    status, code = 422, "idempotency_key_reused"


class PayloadTooLarge(BusgateError):
    status, code = 413, "payload_too_large"


class MessageTooLarge(PayloadTooLarge):
    """A message larger than the bus carries (NATS' ``max_payload``, Kafka's
    ``max_request_size`` or ``message.max.bytes``), refused before it was sent: a request
    answers 413; an adapter's reply or step becomes :class:`ReplyTooLarge`."""


class UnsupportedMediaType(BusgateError):
    status, code = 415, "unsupported_media_type"


class NotAcceptable(BusgateError):
    """The caller's ``Accept`` names none of the formats the edge answers in."""

    status, code = 406, "not_acceptable"


class RateLimited(BusgateError):
    status, code, retryable = 429, "rate_limited", True


class UpstreamError(BusgateError):
    """The runner answered with a server error."""

    status, code = 502, "upstream_error"


class RunnerRefused(BusgateError):
    """The runner refused a saga step with a 4xx: the client's fault, so its status passes
    through as ``/api/request`` passes a 4xx through, instead of becoming a 502."""

    code = "runner_refused"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ReplyTooLarge(BusgateError):
    """The runner's answer, or a saga step, is larger than the bus carries."""

    status, code = 502, "reply_too_large"


class UpstreamUnreachable(BusgateError):
    """The runner could not be reached at all."""

    status, code, retryable = 502, "upstream_unreachable", True


class NoResponders(BusgateError):
    """No adapter serves the system right now."""

    status, code, retryable = 503, "no_adapter", True


class BusUnavailable(BusgateError):
    """The bus connection is down (broker restarting, network)."""

    status, code, retryable = 503, "bus_unavailable", True


class StoreUnavailable(BusgateError):
    """A file service's store could not be reached, or failed the operation."""

    status, code, retryable = 503, "store_unavailable", True


class DeadlineExceeded(BusgateError, TimeoutError):
    status, code, retryable = 504, "deadline_exceeded", True


class Remote(BusgateError):
    """An Error that came over the bus; keeps the status and code the adapter gave it."""

    def __init__(self, error: Error) -> None:
        super().__init__(error.message)
        self.status, self.code, self.retryable = error.status, error.code, error.retryable


class BulkheadFull(BusgateError):
    """Too many calls in flight on this channel/path at this edge (``resilience.bulkhead``)."""

    status, code, retryable = 503, "bulkhead_full", True


class CircuitOpen(BusgateError):
    """The channel/path's circuit breaker is open: its runner has been failing, so the call
    is refused at once, without crossing the bus (``resilience.breaker``)."""

    status, code, retryable = 503, "circuit_open", True
