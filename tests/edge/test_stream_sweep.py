"""The node-wide sweep over open streams: heartbeats and the duration limit."""

from __future__ import annotations

from busgate.contracts.config import Gateway
from busgate.edge import stream
from busgate.edge.open_streams import OpenStreams


class Transport:
    def __init__(self, buffered: int = 0, closing: bool = False) -> None:
        self.buffered, self.closing = buffered, closing

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.buffered


class Response:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    async def write(self, data: bytes) -> None:
        self.written.append(data)


def started(streams: OpenStreams, transport: Transport, silent_for: float):
    slot = streams.open("ip:a")
    slot.response, slot.transport = Response(), transport
    slot.written -= silent_for
    return slot


async def test_a_comment_goes_to_streams_silent_for_a_heartbeat_only():
    streams = OpenStreams(0, 0)
    idle = started(streams, Transport(), silent_for=20)
    recent = started(streams, Transport(), silent_for=1)
    backed_up = started(streams, Transport(buffered=10), silent_for=20)
    closing = started(streams, Transport(closing=True), silent_for=20)
    not_started = streams.open("ip:b")
    await stream.sweep(streams, Gateway(stream_heartbeat=15))
    assert idle.response.written == [b": \n\n"]
    assert recent.response.written == backed_up.response.written == closing.response.written == []
    assert not_started.response is None
    await stream.sweep(streams, Gateway(stream_heartbeat=15))
    assert idle.response.written == [b": \n\n"]  # it was written to just now


async def test_streams_past_the_maximum_duration_are_stopped():
    streams = OpenStreams(0, 0)
    old = started(streams, Transport(), silent_for=0)
    old.opened -= 61
    young = started(streams, Transport(), silent_for=0)
    await stream.sweep(streams, Gateway(max_stream_duration=60))
    assert (old.reason, young.reason) == ("duration", None)


def test_the_sweep_runs_often_enough_for_its_limits():
    assert stream.sweep_interval(Gateway()) == 1.0
    assert stream.sweep_interval(Gateway(stream_heartbeat=0.5)) == 0.25
    assert stream.sweep_interval(Gateway(max_stream_duration=2)) == 0.2
    assert stream.sweep_interval(Gateway(stream_heartbeat=0.001)) == 0.01
