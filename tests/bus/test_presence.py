from bus.presence import PresenceView
from contracts.wire import Presence


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
