"""Encoders and decoders, built once and reused (MessagePack on the bus, JSON for people)."""

from __future__ import annotations

import msgspec

from busgate.contracts.wire import Message

_mp_encoder = msgspec.msgpack.Encoder()
_mp_decoder: msgspec.msgpack.Decoder[Message] = msgspec.msgpack.Decoder(Message)

encode = _mp_encoder.encode


def decode(data: bytes) -> Message:
    """Decode any bus message; raises ``msgspec.DecodeError`` on garbage or unknown tags."""
    return _mp_decoder.decode(data)


json_encode = msgspec.json.Encoder().encode
json_decode = msgspec.json.Decoder().decode
