"""Bus message headers: they repeat the request id, kind and traceparent so operators can
follow a request with ``nats sub`` or a topic reader without decoding bodies."""

from __future__ import annotations

from busgate.contracts.wire import Request

REQUEST_ID = "busgate-request-id"
KIND = "busgate-kind"
TRACEPARENT = "traceparent"


def for_request(req: Request) -> dict[str, str]:
    headers = {REQUEST_ID: req.id, KIND: req.kind}
    if req.traceparent:
        headers[TRACEPARENT] = req.traceparent
    return headers
