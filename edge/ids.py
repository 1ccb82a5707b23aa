"""Request ids (``PREFIX-INSTANCE-COUNTER``) and W3C trace context for each call.

Ids are cheap to make and unique per edge process: the instance part is random per start, so
two replicas or a restarted node never hand out the same id.
"""

from __future__ import annotations

import itertools
import random
import re
import secrets

from busgate.bus.spans import random_hex

_CLIENT_ID = re.compile(r"^[A-Za-z0-9_:\-]{1,128}$")
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


class IdFactory:
    def __init__(self, prefix: str, instance: str | None = None) -> None:
        self.prefix = prefix
        self.instance = instance or secrets.token_hex(3)
        self._counter = itertools.count(1)
        self._rand = random.Random(secrets.randbits(64))

    @property
    def node(self) -> str:
        """This edge node's name on the bus (subject-safe)."""
        return f"{self.prefix}-{self.instance}"

    def request_id(self, client_value: str | None = None) -> str:
        """A new id, or the client's when it is given (callers check it is allowed)."""
        if client_value and _CLIENT_ID.match(client_value):
            return client_value
        return f"{self.prefix}-{self.instance}-{next(self._counter)}"

    def traceparent(self, incoming: str | None = None) -> tuple[str, str]:
        """(traceparent, trace id) for a new span; continues ``incoming`` when it is valid."""
        trace_id, span_id, _, flags = self.context(incoming)
        return f"00-{trace_id}-{span_id}-{flags}", trace_id

    def context(
        self, incoming: str | None = None, sampled: bool = True
    ) -> tuple[str, str, str, str]:
        """(trace id, span id, parent span id, flags) of a call's span: the parent and flags
        are ``incoming``'s when it is a valid ``traceparent``, else a new trace's (parent "",
        sampled or not as ``sampled`` says)."""
        if incoming:
            m = _TRACEPARENT.match(incoming.strip().lower())
            if m and m.group(1) != _ZERO_TRACE and m.group(2) != _ZERO_SPAN:
                span_id = random_hex(8, self._rand.getrandbits)
                return m.group(1), span_id, m.group(2), m.group(3)
        trace_id = random_hex(16, self._rand.getrandbits)
        span_id = random_hex(8, self._rand.getrandbits)
        return trace_id, span_id, "", "01" if sampled else "00"


def is_valid_client_id(value: str) -> bool:
    return bool(_CLIENT_ID.match(value))
