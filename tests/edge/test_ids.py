import re

from busgate.edge.ids import IdFactory

TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def test_request_ids_are_prefix_instance_counter():
    ids = IdFactory("gw", instance="abc123")
    assert [ids.request_id() for _ in range(3)] == ["gw-abc123-1", "gw-abc123-2", "gw-abc123-3"]


def test_two_instances_never_collide():
    assert IdFactory("gw").request_id() != IdFactory("gw").request_id()


def test_client_request_id_is_used_only_when_well_formed():
    ids = IdFactory("gw", instance="i")
    assert ids.request_id("client-42") == "client-42"
    assert ids.request_id("has space") == "gw-i-1"
    assert ids.request_id("a.b") == "gw-i-2"  # dots would break bus subjects
    assert ids.request_id("x" * 200) == "gw-i-3"


def test_new_traceparent_is_w3c_shaped():
    traceparent, trace_id = IdFactory("gw").traceparent()
    assert TRACEPARENT.match(traceparent)
    assert traceparent.split("-")[1] == trace_id


def test_incoming_traceparent_is_continued_with_a_new_span():
    incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    traceparent, trace_id = IdFactory("gw").traceparent(incoming)
    assert trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert traceparent.split("-")[2] != "00f067aa0ba902b7"


def test_invalid_incoming_traceparent_starts_a_new_trace():
    for bad in ("garbage", "00-" + "0" * 32 + "-00f067aa0ba902b7-01", "01-xyz"):
        _, trace_id = IdFactory("gw").traceparent(bad)
        assert trace_id != "0" * 32
        assert len(trace_id) == 32
