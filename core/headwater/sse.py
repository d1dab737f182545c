"""Decoding Server-Sent Events, for chat-model adapters that read a provider's stream.

Most providers stream over SSE (OpenAI's Chat Completions, Anthropic's Messages, ...). An
adapter that reads the HTTP body itself feeds its bytes, in whatever pieces they arrive,
to an :class:`SSEDecoder` and gets whole events back, as the WHATWG rules frame them:
lines end in ``\\n``, ``\\r\\n`` or ``\\r``; a blank line ends an event; ``data:`` lines
join with ``\\n``; ``event:`` names it; comments (``: keep-alive``) are dropped.

Example::

    from headwater.sse import SSEDecoder

    decoder = SSEDecoder()
    async for piece in response.aiter_bytes():
        for event, data in decoder.feed(piece):
            handle(event, json.loads(data))
    for event, data in decoder.close():
        handle(event, json.loads(data))
"""

from __future__ import annotations

import re

__all__ = ["SSEDecoder"]

_LINE = re.compile(rb"\r\n|\r|\n")


class SSEDecoder:
    """Incremental SSE decoder: bytes in, ``(event, data)`` pairs out.

    ``event`` is the ``event:`` field (``""`` when the event has none), ``data`` the
    joined ``data:`` lines. An event without data lines is not reported (as browsers do).

    Example::

        decoder = SSEDecoder()
        decoder.feed(b"event: ping\\ndata: {}\\n")  # []: the event is not complete yet
        decoder.feed(b"\\n")  # [("ping", "{}")]
    """

    __slots__ = ("_buffer", "_data", "_event")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._event = ""

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        """Decode the next piece of the body; returns the events it completed.

        Example::

            for event, data in decoder.feed(piece):
                ...
        """
        buffer = self._buffer + chunk
        events: list[tuple[str, str]] = []
        start = 0
        for match in _LINE.finditer(buffer):
            if match.group() == b"\r" and match.end() == len(buffer):
                break  # maybe the first half of "\r\n": wait for the next chunk
            self._line(buffer[start : match.start()], events)
            start = match.end()
        self._buffer = buffer[start:]
        return events

    def close(self) -> list[tuple[str, str]]:
        """The body ended: the events left (a last event without its blank line counts).

        Example::

            for event, data in decoder.close():
                ...
        """
        events: list[tuple[str, str]] = []
        if self._buffer:
            self._line(self._buffer.rstrip(b"\r"), events)
            self._buffer = b""
        self._line(b"", events)
        return events

    def _line(self, raw: bytes, events: list[tuple[str, str]]) -> None:
        if not raw:
            if self._data:
                events.append((self._event, "\n".join(self._data)))
            self._data, self._event = [], ""
            return
        line = raw.decode("utf-8", errors="replace")
        if line.startswith(":"):
            return  # a comment (keep-alive)
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
