"""Compact SSE frames: an event's ``_event`` header sent once per source, then by reference.

An ``astream_events`` frame carries the event's fields plus ``_event`` (type, name, run id,
parent ids, tags, metadata, see :class:`~._wire.EventEncoder`). For the tokens of one
model call that header is the same every time and several times larger than the token.
A client that asks for compact frames (``?frames=compact``) gets each distinct header
once, in full with a ``ref`` number added, and then only ``"_event": {"ref": N}``::

    data: {"chunk":{...},"_event":{"event":"on_chat_model_stream",...,"ref":3}}
    data: {"chunk":{...},"_event":{"ref":3}}

The numbering is per connection: a client that reconnects (``Last-Event-ID``) gets each
header in full again before its first reference. The log itself keeps full frames, so
clients of both kinds, and late joiners, follow the same run.

Example::

    compact = Compactor()
    compact('{"chunk":1,"_event":{"event":"e","run_id":"r"}}')
    # '{"chunk":1,"_event":{"event":"e","run_id":"r","ref":1}}'
    compact('{"chunk":2,"_event":{"event":"e","run_id":"r"}}')
    # '{"chunk":2,"_event":{"ref":1}}'
"""

from __future__ import annotations

import json

__all__ = ["FRAMES", "Compactor"]

FRAMES = ("full", "compact")
"""The values of a stream request's ``frames`` parameter (``full`` is the default)."""

_MARK = '"_event":{"event":'
_LIMIT = 4096
"""Headers one connection remembers; past it the table starts again (headers are then
sent in full once more, with new numbers)."""


class Compactor:
    """Turns one connection's full frames into compact ones (see the module's text).

    A frame is changed only where its ``_event`` header is certain: the header is found
    at the end of the frame, and the first time a header is seen the whole frame is
    parsed to check it. Anything else (a stream mode's chunk, a terminal ``error``) passes
    unchanged.
    """

    __slots__ = ("_last", "_refs")

    def __init__(self) -> None:
        self._refs: dict[str, int] = {}
        self._last: tuple[str, str] = ("\0", "")  # (full tail, compact tail) of the last one

    def __call__(self, data: str) -> str:
        """The compact form of one frame's ``data``."""
        full, short = self._last
        if data.endswith(full):  # another token of the same call: the common case
            return data[: len(data) - len(full)] + short
        start = data.rfind(_MARK)
        if start < 0 or not data.endswith("}}") or data[start - 1] not in ",{":
            return data
        header = data[start + len('"_event":') : -1]
        ref = self._refs.get(header)
        if ref is None:
            if not _is_header(data, header):
                return data
            if len(self._refs) >= _LIMIT:
                self._refs.clear()
            ref = self._refs[header] = len(self._refs) + 1
            tail = f'"_event":{header[:-1]},"ref":{ref}}}}}'
        else:
            tail = f'"_event":{{"ref":{ref}}}}}'
        self._last = (data[start:], f'"_event":{{"ref":{ref}}}}}')
        return data[:start] + tail


def _is_header(data: str, header: str) -> bool:
    """Whether ``header`` is exactly the top-level ``_event`` of frame ``data`` (not a
    look-alike inside a value)."""
    try:
        frame = json.loads(data)
        return isinstance(frame, dict) and frame.get("_event") == json.loads(header)
    except ValueError:
        return False
