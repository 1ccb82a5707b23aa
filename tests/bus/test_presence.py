from busgate.bus.presence import PresenceView
from busgate.contracts.wire import Presence


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_adapter_is_seen_until_its_ttl_runs_out():
    clock = Clock()
    view = PresenceView(clock)
    view.update(Presence(node="a1", systems=("demo", "crm"), ttl=6))
    assert view.serves("demo") and view.serves("crm")
    clock.now += 5.9
    assert view.nodes("demo") == ["a1"]
    clock.now += 0.2
    assert not view.serves("demo")


def test_goodbye_removes_the_adapter_at_once():
    view = PresenceView(Clock())
    view.update(Presence(node="a1", systems=("demo",)))
    view.update(Presence(node="a2", systems=("demo",)))
    view.update(Presence(node="a1", systems=("demo",), ttl=0))
    assert view.nodes("demo") == ["a2"]


def test_a_heartbeat_replaces_the_systems_an_adapter_serves():
    view = PresenceView(Clock())
    view.update(Presence(node="a1", systems=("demo", "crm")))
    view.update(Presence(node="a1", systems=("crm",)))
    assert view.snapshot() == {"crm": ["a1"], "demo": []}


def test_requests_go_only_to_partitions_live_adapters_hold():
    clock = Clock()
    view = PresenceView(clock)
    view.update(Presence(node="a1", systems=("demo",), ttl=6, partitions={"demo": (0, 1)}))
    view.update(Presence(node="a2", systems=("demo",), ttl=9, partitions={"demo": (2,)}))
    assert view.partitions("demo") == [0, 1, 2]
    view.update(Presence(node="a2", systems=("demo",), ttl=0))  # goodbye
    assert view.partitions("demo") == [0, 1]
    view.update(Presence(node="a2", systems=("demo",), ttl=9, partitions={"demo": (2,)}))
    clock.now += 7  # a1 fell silent
    assert view.partitions("demo") == [2]


def test_partitions_are_unknown_while_any_live_adapter_does_not_say():
    view = PresenceView(Clock())
    view.update(Presence(node="a1", systems=("demo",), partitions={"demo": (0,)}))
    view.update(Presence(node="old", systems=("demo",)))  # a busgate without the field
    assert view.partitions("demo") == []
    assert view.partitions("nobody") == []
