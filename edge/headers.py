"""Client header values that travel on (into the envelope, a token check, a hash): checked to
be text first.

aiohttp decodes header bytes as UTF-8 with ``surrogateescape``, so a byte that is not UTF-8
becomes a lone surrogate; the first encoder after that (msgspec on the bus, pyjwt, hashlib)
raises, which was a 500 with a traceback. Checking costs one ``isascii()`` for the usual
ASCII value.
"""

from __future__ import annotations

from aiohttp import web

from busgate.contracts import errors


def is_text(value: str) -> bool:
    """Whether ``value`` came from valid UTF-8 (no escaped stray bytes)."""
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def checked(name: str, value: str) -> str:
    """``value`` as it is, or 400 naming the header when its bytes are not UTF-8."""
    if not is_text(value):
        raise errors.BadRequest(f"the {name} header is not valid UTF-8")
    return value


def readable(value: str) -> str:
    """``value`` for a log or an event: stray bytes replaced (U+FFFD), never an error."""
    if is_text(value):
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def header(request: web.Request, name: str) -> str | None:
    """A header's value (None when absent), checked."""
    value = request.headers.get(name)
    return None if value is None else checked(name, value)
