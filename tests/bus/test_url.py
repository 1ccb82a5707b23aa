"""Bus URLs: which transport, which servers, and the Kafka options a real cluster needs."""

from __future__ import annotations

import pytest

from busgate.bus import from_url, parse_url


def test_nats_urls_keep_every_server():
    assert parse_url("nats://a:4222,nats://b:4222") == (
        "nats",
        ["nats://a:4222", "nats://b:4222"],
        {},
    )


def test_kafka_urls_take_servers_and_options():
    assert parse_url("kafka://a:9092,b:9092?partitions=12&replication=3&session_timeout=10") == (
        "kafka",
        ["a:9092", "b:9092"],
        {"request_partitions": 12, "replication_factor": 3, "session_timeout": 10.0},
    )


def test_kafka_options_reach_the_transport():
    bus = from_url("kafka://a:9092?partitions=12", node="n")
    assert bus.request_partitions == 12  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("kafka://a:9092?partitons=12", "unknown option 'partitons'; known: partitions"),
        ("kafka://a:9092?partitions=many", "partitions must be an integer"),
        ("kafka://a:9092?partitions=0", "partitions must be positive"),
        ("kafka://a:9092?session_timeout=soon", "session_timeout must be a number"),
        ("kafka://a:9092?partitions", "bad query field"),
        ("nats://a:4222?partitions=2", "unknown option 'partitions'; known: max_payload"),
        ("nats://a:4222?max_payload=0", "max_payload must be positive"),
        ("amqp://a:5672", "unsupported bus URL"),
    ],
)
def test_bad_urls_say_what_is_wrong(url, says):
    with pytest.raises(ValueError, match=says):
        parse_url(url)
