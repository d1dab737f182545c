"""headwater.sse.SSEDecoder: whole events from a body however it is cut into pieces."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.sse import SSEDecoder

BODY = (
    b": keep-alive\r\n"
    b'event: message_start\r\ndata: {"a": 1}\r\n\r\n'
    b"data: line one\ndata: line two\n\n"
    b"event: ping\rdata:no-space\r\r"
    b"id: 7\nretry: 100\nevent: only-a-name\n\n"  # no data: not reported
    b"data: \xc3\xa9t\xc3\xa9\n\n"  # UTF-8 split anywhere still decodes
    b"data: last, without its blank line"
)
EXPECTED = [
    ("message_start", '{"a": 1}'),
    ("", "line one\nline two"),
    ("ping", "no-space"),
    ("", "été"),
    ("", "last, without its blank line"),
]


def decode(pieces: list[bytes]) -> list[tuple[str, str]]:
    decoder = SSEDecoder()
    events = [event for piece in pieces for event in decoder.feed(piece)]
    return events + decoder.close()


def test_one_piece() -> None:
    assert decode([BODY]) == EXPECTED


@settings(max_examples=300, deadline=None, database=None)
@given(cuts=st.lists(st.integers(0, len(BODY)), max_size=12))
def test_any_cutting_of_the_body_gives_the_same_events(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(BODY)]
    pieces = [BODY[a:b] for a, b in itertools.pairwise(bounds)]
    assert decode(pieces) == EXPECTED


def test_a_lone_carriage_return_at_a_piece_end_waits_for_the_next_piece() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\r") == []
    assert decoder.feed(b"\n\r\n") == [("", "x")]
