"""The bytes of server-sent events."""

from __future__ import annotations

from busgate.edge import sse


def test_an_event_is_data_lines_and_a_blank_line():
    assert sse.event(b'{"a":1}') == b'data: {"a":1}\n\n'


def test_id_and_name_come_before_the_data():
    assert sse.event(b"5", id="5", name="tick") == b"event: tick\nid: 5\ndata: 5\n\n"


def test_multi_line_data_becomes_one_data_line_each():
    assert sse.event(b'{\n  "a": 1\r\n}') == b'data: {\ndata:   "a": 1\ndata: }\n\n'


def test_ids_that_cannot_be_sent_are_left_out():
    assert sse.event(b"1", id="a\nb") == b"data: 1\n\n"
    assert sse.event(b"1", id="a\0b") == b"data: 1\n\n"
    assert sse.event(b"1", id="") == b"id: \ndata: 1\n\n"


def test_a_step_puts_its_cursor_on_its_last_event_only():
    assert sse.step([b"1", b"2"], "2") == b"data: 1\n\nid: 2\ndata: 2\n\n"
    assert sse.step([b"1"], None) == b"data: 1\n\n"


def test_an_empty_step_with_a_cursor_moves_the_last_event_id_only():
    assert sse.step([], "7") == b"id: 7\n\n"


def test_a_keepalive_step_is_nothing():
    assert sse.step([], None) == b""
    assert sse.step([], "bad\rcursor") == b""


def test_end_and_error_events_carry_data_so_that_browsers_dispatch_them():
    assert sse.END == b"event: end\ndata: {}\n\n"
    assert sse.error(b'{"error":{}}') == b'event: error\ndata: {"error":{}}\n\n'


def test_comments_are_single_lines():
    assert sse.comment() == b": \n\n"
    assert sse.comment("a\nb") == b": a b\n\n"
