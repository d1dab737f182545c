"""Runs the server streams: each run's events go to a broker log that clients follow.

Every streamed request (SSE, WebSocket, ``POST /runs``) becomes a run whose events are
published to a :class:`~headwater.broker.Broker` (in-process ``memory:`` by default,
Redis across instances). Clients read the log from any position (``Last-Event-ID``), so
a client can join late, reconnect to any server, or leave while the run continues.
A log ends with one terminal entry: ``end``, ``error`` or ``cancelled``.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import attrs

from headwater import serde
from headwater.broker import Broker, BrokerEntry, BrokerError
from headwater.runtime import new_id

__all__ = [
    "TERMINAL",
    "RunRecord",
    "EventEncoder",
    "encode_event",
    "encode_json",
    "publish_batch",
    "publish_stream",
    "wire_entries",
    "execute",
    "follow",
    "publish",
]

TERMINAL = frozenset({"end", "error", "cancelled"})
"""Entry events that end a run's log."""


def encode_json(value: Any) -> str:
    """JSON text of any value headwater's serde can encode (messages, chunks, errors …)."""
    return json.dumps(serde.encode(value), separators=(",", ":"), allow_nan=False)


_META_KEYS = ("event", "name", "run_id", "parent_ids", "tags", "metadata")


class EventEncoder:
    """The wire JSON of ``astream_events`` dicts: the event's ``data`` fields at the top
    level (``JSON.parse(e.data).chunk.content`` works as the spec's browser code expects)
    plus ``_event`` with its type, name, run id, parent ids, tags and metadata.

    Those describe where an event came from and repeat for every token of one model call,
    so their JSON is made once per ``(type, run_id)`` and reused. ``extra`` goes into
    every ``_event`` (a worker's ``attempt``).
    """

    def __init__(self, extra: Mapping[str, Any] | None = None) -> None:
        self._extra = dict(extra or {})
        self._meta: dict[tuple[str, str], str] = {}

    def __call__(self, event: Mapping[str, Any]) -> str:
        key = (event["event"], event["run_id"])
        meta = self._meta.get(key)
        if meta is None:
            if len(self._meta) >= 4096:  # a long run of many calls: keep the cache small
                self._meta.clear()
            meta = encode_json({**{k: event[k] for k in _META_KEYS}, **self._extra})
            self._meta[key] = meta
        data = event["data"]
        if isinstance(data, Mapping):
            fields = dict(data)
            fields.pop("_event", None)
        else:
            fields = {"value": data}
        body = encode_json(fields)
        return f'{body[:-1]}{"," if fields else ""}"_event":{meta}}}'


async def wire_entries(
    stream: Any, stream_mode: Any = None, extra: Mapping[str, Any] | None = None
) -> AsyncIterator[tuple[str, str]]:
    """``(event, JSON text)`` log entries of a run's stream, closing the stream at the end.

    ``stream_mode`` is what the stream was opened with: ``None`` for ``astream_events``
    (entries named by event type, encoded by :class:`EventEncoder` with ``extra``), a mode
    name (entries named by it), or a list of modes (``(mode, chunk)`` pairs).
    """
    encode = EventEncoder(extra)
    async with stream:
        async for item in stream:
            if stream_mode is None:
                yield item["event"], encode(item)
            elif isinstance(stream_mode, str):
                yield stream_mode, encode_json(item)
            else:
                yield item[0], encode_json(item[1])


def encode_event(entry: BrokerEntry, run_id: str) -> dict[str, Any]:
    """A log entry as the spec's WebSocket message ``{"type", "name", "data", ...}``."""
    data = json.loads(entry.data)
    meta = data.pop("_event", None) if isinstance(data, dict) else None
    if meta is None:
        return {"type": entry.event, "data": data, "run_id": run_id, "id": entry.id}
    return {
        "type": entry.event,
        "name": meta["name"],
        "data": data,
        "run_id": meta["run_id"],
        "parent_ids": meta["parent_ids"],
        "tags": meta["tags"],
        "metadata": meta["metadata"],
        "id": entry.id,
    }


_TURN = 0.002
"""Seconds a run may publish without letting the event loop run its clients' streams."""

PUBLISH_BUDGET = 15.0
"""Seconds a publish keeps retrying through a broker outage before the event is dropped."""


async def publish(
    broker: Broker, run_id: str, event: str, data: str, *, must: bool = False
) -> None:
    """Publish one entry, retrying through a broker outage (see :func:`publish_batch`).

    ``must`` marks a terminal entry, which keeps retrying so followers learn that the
    run ended.
    """
    await publish_batch(broker, run_id, [(event, data)], must=must)


async def publish_batch(
    broker: Broker, run_id: str, entries: list[tuple[str, str]], *, must: bool = False
) -> None:
    """Publish entries in one round trip, retrying with backoff through a broker outage
    (a Redis restart).

    The run does not stop for the broker: after :data:`PUBLISH_BUDGET` seconds the
    entries are dropped (their effect on the state is safe in the checkpointer), except
    with ``must``, which keeps retrying.
    """
    delay, waited = 0.05, 0.0
    while True:
        try:
            await broker.publish_many(run_id, entries)
            return
        except BrokerError:
            if not must and waited >= PUBLISH_BUDGET:
                return
            await anyio.sleep(delay)
            waited += delay
            delay = min(delay * 2, 1.0)


_BATCH = 512
"""Most entries one publish round trip carries."""


async def publish_stream(
    broker: Broker, run_id: str, stream: AsyncIterator[tuple[str, str]]
) -> None:
    """Publish every ``(event, JSON text)`` of ``stream`` to the run's log, in order.

    While one batch is on its way to the broker, the run goes on producing: the next
    batch takes all that arrived meanwhile, so a networked broker costs one round trip
    per batch, not per token, and an idle run still publishes each event at once. A
    bounded buffer between the two slows the run down if the broker falls behind.
    Raises whatever ``stream`` raised.
    """
    send, receive = anyio.create_memory_object_stream[tuple[str, str]](_BATCH)
    failed: list[Exception] = []

    async def produce() -> None:
        async with send:
            try:
                turn = time.monotonic()  # the first event goes out at once
                async for item in stream:
                    try:
                        send.send_nowait(item)  # no scheduling round per event
                    except anyio.WouldBlock:
                        await send.send(item)  # the broker is behind: wait for room
                    if time.monotonic() >= turn:
                        # A run producing events without ever waiting (a fast model, a
                        # burst of custom events) would otherwise hold the loop until it
                        # ends: its clients would see its first event only then.
                        await anyio.lowlevel.checkpoint()
                        turn = time.monotonic() + _TURN
            except Exception as exc:  # raised below, as itself (not in an ExceptionGroup)
                failed.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(produce)
        async with receive:
            async for first in receive:
                batch = [first]
                with contextlib.suppress(anyio.WouldBlock, anyio.EndOfStream):
                    while len(batch) < _BATCH:
                        batch.append(receive.receive_nowait())
                await publish_batch(broker, run_id, batch)
    if failed:
        raise failed[0]


@attrs.define(eq=False)
class RunRecord:
    """A run executed by this server process: its status and cancel scope."""

    graph: str
    thread_id: str | None
    owner: str | None
    run_id: str = attrs.field(factory=new_id)
    status: str = "pending"  # pending | running | done | error | cancelled
    error: str | None = None
    scope: anyio.CancelScope | None = None
    done: anyio.Event = attrs.field(factory=anyio.Event)

    @property
    def finished(self) -> bool:
        """Whether the run has ended (successfully or not)."""
        return self.status in TERMINAL or self.status == "done"

    def cancel(self) -> None:
        """Cancel the run (no-op once finished)."""
        if self.scope is not None and not self.finished:
            self.scope.cancel()


async def execute(
    record: RunRecord,
    stream: AsyncIterator[tuple[str, str]],
    broker: Broker,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Drive ``stream`` of ``(event, JSON text)`` into the run's broker log until it ends."""
    run_id = record.run_id
    with anyio.CancelScope() as scope:
        record.scope = scope
        record.status = "running"
        task_status.started()
        try:
            await publish_stream(broker, run_id, stream)
        except Exception as exc:
            with anyio.CancelScope(shield=True):
                body = {"type": type(exc).__name__, "message": str(exc)}
                await publish(broker, run_id, "error", encode_json(body), must=True)
            record.status, record.error = "error", f"{type(exc).__name__}: {exc}"
            record.done.set()
            return
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()
    with anyio.CancelScope(shield=True):
        if scope.cancelled_caught:
            record.status = "cancelled"
            await publish(broker, run_id, "cancelled", encode_json({"run_id": run_id}), must=True)
        else:
            record.status = "done"
            done = encode_json({"run_id": run_id, "status": "done"})
            await publish(broker, run_id, "end", done, must=True)
    record.done.set()


async def follow(
    broker: Broker,
    run_id: str,
    after: str | None,
    heartbeat: float,
    ended: Callable[[], Awaitable[str | None]] | None = None,
) -> AsyncIterator[list[BrokerEntry]]:
    """Yield the run's entries after ``after`` in batches as they come (``[]``: heartbeat).

    The log ends with a terminal entry. ``ended()`` (queue mode) returns the run's final
    status once it has one: if the log stays quiet and the run ended, its terminal entry
    was lost (a broker restart) and is synthesised so the follower does not wait forever.
    """
    position = after
    while True:
        entries = await broker.read(run_id, position, block=heartbeat)
        if not entries:
            status = await ended() if ended is not None else None
            if status is not None:
                event = "end" if status == "done" else status
                body = encode_json({"run_id": run_id, "status": status, "synthesised": True})
                yield [BrokerEntry(id="", event=event, data=body)]
                return
            yield []
            continue
        for i, entry in enumerate(entries):
            if entry.event in TERMINAL:
                yield entries[: i + 1]
                return
        position = entries[-1].id
        yield entries
