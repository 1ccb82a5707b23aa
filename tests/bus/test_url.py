"""Bus URLs: which transport, which servers, and the Kafka options a real cluster needs."""

from __future__ import annotations

import pytest

from busgate.bus import from_url, kafka_client_of, parse_url
from busgate.bus.security import BusTls


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


def test_tls_options_are_one_for_nats_and_kafka_ssl():
    tls = BusTls(ca="/ca.pem", cert="/n.pem", key="/n.key", poll=2.0)
    query = "ca=/ca.pem&cert=/n.pem&key=/n.key&poll=2"
    assert parse_url(f"tls://a:4222?{query}") == ("nats", ["tls://a:4222"], {"tls": tls})
    assert parse_url(f"kafka+ssl://a:9093,b:9093?{query}&partitions=3") == (
        "kafka",
        ["a:9093", "b:9093"],
        {"request_partitions": 3, "tls": tls},
    )
    assert parse_url("kafka+ssl://a:9093") == ("kafka", ["a:9093"], {"tls": BusTls()})


def test_kafka_ssl_reaches_every_aiokafka_client(tmp_path):
    import trustme

    ca = tmp_path / "ca.pem"
    ca.write_bytes(trustme.CA().cert_pem.bytes())
    client = kafka_client_of(f"kafka+ssl://a:9093?ca={ca}")
    assert client["bootstrap_servers"] == "a:9093" and client["security_protocol"] == "SSL"
    bus = from_url(f"kafka+ssl://a:9093?ca={ca}", node="n")
    assert bus.client["ssl_context"] is client["ssl_context"]  # type: ignore[attr-defined]
    assert kafka_client_of("kafka://a:9092") == {"bootstrap_servers": "a:9092"}


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
        ("kafka://a:9092?ca=/ca.pem", "ca, cert, key and poll are for kafka\\+ssl:// URLs"),
        ("tls://a:4222?cert=/n.pem", "cert and key go together"),
        ("kafka+ssl://a:9093?poll=0", "poll must be positive"),
    ],
)
def test_bad_urls_say_what_is_wrong(url, says):
    with pytest.raises(ValueError, match=says):
        parse_url(url)
