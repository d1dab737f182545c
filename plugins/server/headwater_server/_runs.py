"""Runs the server executes: a run streams into a bounded, replayable event log.

Every streamed request (SSE, WebSocket, ``POST /runs``) becomes a :class:`RunRecord`
executed in the app's task group. Clients read the record's log from any position
(``Last-Event-ID``), so a client can join late, reconnect, or leave while the run
continues (``on_disconnect="continue"``).
"""

from __future__ import annotations

import collections
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import anyio
import anyio.abc
import attrs

from headwater import serde
from headwater.runtime import new_id

__all__ = ["Entry", "RunRecord", "encode_event", "encode_json"]

RETENTION = 10_000
"""Events kept per run for late joiners and reconnects; older ones are dropped."""


def encode_json(value: Any) -> str:
    """JSON text of any value headwater's serde can encode (messages, chunks, errors …)."""
    return json.dumps(serde.encode(value), separators=(",", ":"), allow_nan=False)


def encode_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """An ``astream_events`` dict as plain JSON data (for WebSocket messages)."""
    return {
        "type": event["event"],
        "name": event["name"],
        "data": serde.encode(event["data"]),
        "run_id": event["run_id"],
        "parent_ids": event["parent_ids"],
        "tags": event["tags"],
        "metadata": serde.encode(event["metadata"]),
    }


@attrs.frozen
class Entry:
    """One log entry: ``id`` (1, 2, …), SSE ``event`` name and the JSON ``data`` text."""

    id: int
    event: str
    data: str
    raw: Any = attrs.field(eq=False, repr=False)


@attrs.define(eq=False)
class RunRecord:
    """A run executed by the server, with its event log and status."""

    graph: str
    thread_id: str | None
    owner: str | None
    run_id: str = attrs.field(factory=new_id)
    status: str = "pending"  # pending | running | done | error | cancelled
    error: str | None = None
    result: Any = None
    log: collections.deque[Entry] = attrs.field(factory=lambda: collections.deque(maxlen=RETENTION))
    next_id: int = 1
    scope: anyio.CancelScope | None = None
    _changed: anyio.Event = attrs.field(factory=anyio.Event, alias="_changed")
    done: anyio.Event = attrs.field(factory=anyio.Event)

    @property
    def finished(self) -> bool:
        """Whether the run has ended (successfully or not)."""
        return self.status in ("done", "error", "cancelled")

    def append(self, event: str, data: str, raw: Any = None) -> None:
        """Add an entry and wake readers."""
        self.log.append(Entry(self.next_id, event, data, raw))
        self.next_id += 1
        self._changed.set()
        self._changed = anyio.Event()

    def finish(self, status: str, error: str | None = None) -> None:
        """Mark the run ended and wake readers."""
        self.status = status
        self.error = error
        self._changed.set()
        self.done.set()

    def cancel(self) -> None:
        """Cancel the run (no-op once finished)."""
        if self.scope is not None and not self.finished:
            self.scope.cancel()

    def oldest_id(self) -> int:
        """The id of the oldest entry still kept (``next_id`` when empty)."""
        return self.log[0].id if self.log else self.next_id

    async def follow(self, after: int = 0) -> AsyncIterator[Entry]:
        """Yield entries with id > ``after``, waiting for new ones until the run ends."""
        position = after
        while True:
            changed = self._changed
            for entry in list(self.log):
                if entry.id > position:
                    position = entry.id
                    yield entry
            if self.finished and position >= self.next_id - 1:
                return
            await changed.wait()


async def execute(
    record: RunRecord,
    stream: AsyncIterator[tuple[str, Any]],
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Drive ``stream`` of ``(sse_event, payload)`` into ``record`` until it ends."""
    with anyio.CancelScope() as scope:
        record.scope = scope
        record.status = "running"
        task_status.started()
        try:
            async for name, payload in stream:
                record.append(name, encode_json(payload), payload)
        except Exception as exc:
            record.append("error", encode_json({"type": type(exc).__name__, "message": str(exc)}))
            record.finish("error", f"{type(exc).__name__}: {exc}")
            return
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()
    if scope.cancelled_caught:
        record.append("cancelled", encode_json({"run_id": record.run_id}))
        record.finish("cancelled")
    else:
        record.append("end", encode_json({"run_id": record.run_id, "status": "done"}))
        record.finish("done")
