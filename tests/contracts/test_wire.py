import msgspec
import pytest

from busgate.contracts.codec import decode, encode
from busgate.contracts.wire import (
    Cancel,
    Error,
    Identity,
    Origin,
    Presence,
    Reply,
    Request,
    StreamStep,
)


def test_request_round_trips_with_every_field():
    req = Request(
        id="gw-a1-1",
        kind="stream",
        traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01",
        channel="demo",
        system="demo",
        path="count",
        method="GET",
        query={"to": "5"},
        headers={"accept": "application/json"},
        body=b'{"x":1}',
        identity=Identity(subject="demo", roles=("user",), claims={"k": 1}, session_id="s1"),
        origin=Origin(client_ip="127.0.0.1", user_agent="curl"),
        reply_to="busgate.reply.n.gw-a1-1",
        deadline=1.5,
        attempt=2,
        resume="4",
    )
    assert decode(encode(req)) == req


@pytest.mark.parametrize(
    "msg",
    [
        Reply(id="r", status=418, headers={"content-type": "text/plain"}, body=b"teapot"),
        Reply(id="r", error=Error(code="upstream_error", message="boom", retryable=True)),
        StreamStep(id="r", seq=3, items=[b"1", b'{"a":2}'], next="4", last=True),
        Cancel(id="r", reason="client went away"),
        Presence(node="a1", systems=("demo",), capacity=10, ttl=6),
    ],
)
def test_every_message_round_trips(msg):
    assert decode(encode(msg)) == msg


def test_body_stays_raw_bytes():
    body = b'{"keep": "exactly",  "spaces": 1}'
    assert decode(encode(Request(id="r", body=body))).body == body


def test_message_from_a_newer_producer_decodes_with_unknown_fields_ignored():
    newer = msgspec.msgpack.encode(
        {
            "t": "req",
            "v": 2,
            "id": "r9",
            "system": "demo",
            "body": b"{}",
            "priority": "high",
            "identity": {"subject": "u", "mfa": True},
        }
    )
    req = decode(newer)
    assert isinstance(req, Request)
    assert (req.id, req.v, req.system, req.identity.subject) == ("r9", 2, "demo", "u")


def test_unknown_message_kind_is_a_decode_error():
    with pytest.raises(msgspec.DecodeError):
        decode(msgspec.msgpack.encode({"t": "from-the-future", "id": "x"}))


def test_defaults_are_omitted_on_the_wire():
    small = encode(Reply(id="r"))
    assert len(small) < 16
    assert b"headers" not in small
