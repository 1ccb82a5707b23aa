"""Which subjects/topics ``busgate tail`` follows for its named sets (``busgate.tail``)."""

from __future__ import annotations

from busgate.tail import followed


def test_audit_follows_every_channel_on_nats_and_the_one_topic_on_kafka() -> None:
    assert followed("nats", "gw", "audit") == ["gw.audit.>"]
    assert followed("kafka", "gw", "audit") == ["gw.audit"]


def test_commands_and_plain_names() -> None:
    assert followed("nats", "gw", "commands") == ["gw.cmd.>"]
    assert followed("kafka", "gw", "commands") == ["gw.cmd", "gw.cmd.dead"]
    assert followed("nats", "gw", "orders.>") == ["orders.>"]
    # On a service's broker the names are that broker's own: nothing is rewritten.
    assert followed("nats", "gw", "audit", service="events") == ["audit"]


def test_track_follows_every_channel_on_nats_and_the_one_topic_on_kafka() -> None:
    assert followed("nats", "gw", "track") == ["gw.track.>"]
    assert followed("kafka", "gw", "track") == ["gw.track"]
