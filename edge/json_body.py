"""The edge's check that a client's JSON body is well formed and not nested too deeply.

msgspec (like Python's json) recurses per nesting level and raises RecursionError near the
interpreter's limit (about 1000 levels), which was a 500. The edge refuses bodies deeper
than :data:`MAX_DEPTH` with a 400 instead, well below that limit, so a body it accepts never
hits the limit in a hop after it (an adapter's saga loop decoding the parameters, a Python
runner) where the stack is deeper.
"""

from __future__ import annotations

from typing import Any

import msgspec

from busgate.contracts import errors

MAX_DEPTH = 128
"""Levels of arrays and objects a body may nest; real APIs stay far below."""

_decoder = msgspec.json.Decoder()
_TOO_DEEP = f"JSON body is nested deeper than {MAX_DEPTH} levels"


def check_json(body: bytes) -> None:
    """Raise BadRequest unless ``body`` is JSON nested at most :data:`MAX_DEPTH` deep."""
    try:
        value = _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise errors.BadRequest(f"malformed JSON body: {exc}") from None
    except RecursionError:
        raise errors.BadRequest(_TOO_DEEP) from None
    # Depth needs that many brackets: a length check and two C-speed counts spare the walk
    # for most bodies.
    if (
        len(body) > MAX_DEPTH
        and body.count(b"[") + body.count(b"{") > MAX_DEPTH
        and depth(value) > MAX_DEPTH
    ):
        raise errors.BadRequest(_TOO_DEEP)


def depth(value: Any) -> int:
    """How deeply arrays and objects nest in a decoded value (iterative: no recursion);
    the walk stops once past :data:`MAX_DEPTH`."""
    if not isinstance(value, (dict, list)):
        return 0
    deepest = 0
    todo: list[tuple[dict[str, Any] | list[Any], int]] = [(value, 1)]
    while todo and deepest <= MAX_DEPTH:
        node, level = todo.pop()
        deepest = max(deepest, level)
        children = node.values() if isinstance(node, dict) else node
        todo.extend((c, level + 1) for c in children if isinstance(c, (dict, list)))
    return deepest
