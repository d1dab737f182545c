"""Executing a run into its broker log: the pieces the server and the workers share.

Every run's events are published to a :class:`~headwater.broker.Broker` log (in-process
``memory:`` by default, Redis across instances). Clients read the log from any position
(``Last-Event-ID``), so a client can join late, reconnect to any server, or leave while
the run continues. A log ends with one terminal entry: ``end``, ``error`` or
``cancelled``.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import attrs

from headwater import Command, CompiledGraph, Send
from headwater.broker import Broker, BrokerError
from headwater.checkpoint import new_checkpoint_id
from headwater.messages import AIMessageChunk

from ._wire import EventEncoder, dumps

__all__ = [
    "PUBLISH_BUDGET",
    "TERMINAL",
    "Outcome",
    "drive",
    "encode_json",
    "is_cancellation",
    "open_run_stream",
    "publish",
    "publish_batch",
    "publish_stream",
    "rollback_thread",
    "run_entries",
    "terminal_entry",
    "wire_entries",
]

TERMINAL = frozenset({"end", "error", "cancelled"})
"""Entry events that end a run's log."""

encode_json = dumps
"""JSON text of a value as clients receive it (plain JSON, see :mod:`._wire`)."""

_FILTER_KEYS = (
    "include_names",
    "include_types",
    "include_tags",
    "exclude_names",
    "exclude_types",
    "exclude_tags",
)


def open_run_stream(
    graph: CompiledGraph, input: Any, config: Mapping[str, Any], spec: Mapping[str, Any]
) -> Any:
    """Open (without starting) the stream a run asked for: stream modes, or
    ``astream_events`` with filters. Raises the core's errors for a bad mode or filter."""
    mode = spec.get("stream_mode")
    protocol = spec.get("protocol")
    if protocol is not None:  # the LangGraph server protocol: modes as a list, commands
        before, after = protocol.get("interrupt_before"), protocol.get("interrupt_after")
        if before or after:
            graph = graph.with_interrupts(before=before or (), after=after or ())
        command = protocol.get("command")
        if command is not None:
            input = Command(
                update=command.get("update"),
                goto=_goto(command.get("goto")),
                resume=command.get("resume"),
            )
        return graph.astream(
            input, config, stream_mode=list(mode or ()), subgraphs=bool(protocol.get("subgraphs"))
        )
    if mode is not None:
        return graph.astream(input, config, stream_mode=mode)
    filters = {k: spec[k] for k in _FILTER_KEYS if spec.get(k) is not None}
    return graph.astream_events(input, config, filters=spec.get("filters"), **filters)


def _goto(goto: Any) -> Any:
    """A protocol command's ``goto`` (a node, ``{"node", "input"}``, or a list of them)."""
    if goto is None:
        return ()
    if isinstance(goto, dict):
        return Send(goto["node"], goto.get("input"))
    if isinstance(goto, list):
        return tuple(_goto(g) for g in goto)
    return goto


def run_entries(
    stream: Any, spec: Mapping[str, Any], run_id: str, extra: Mapping[str, Any] | None = None
) -> AsyncIterator[tuple[str, str]]:
    """The log entries of a run opened by :func:`open_run_stream` with ``spec``: the
    protocol's (:func:`protocol_entries`) or headwater's own (:func:`wire_entries`)."""
    protocol = spec.get("protocol")
    if protocol is not None:
        attempt = int((extra or {}).get("attempt", 1))
        return protocol_entries(stream, protocol["modes"], run_id, attempt)
    return wire_entries(stream, spec.get("stream_mode"), extra)


async def protocol_entries(
    stream: Any, modes: list[str], run_id: str, attempt: int = 1
) -> AsyncIterator[tuple[str, str]]:
    """Entries as the LangGraph server protocol names them: ``metadata`` first (the run
    id), then ``<mode>`` or ``<mode>|<namespace>`` for each chunk of ``stream`` (opened
    with a list of modes). ``messages-tuple`` is the core's ``messages`` as
    ``[chunk, metadata]`` (event ``messages``); the protocol's ``messages`` mode sends
    ``messages/metadata``, ``messages/partial`` (the message so far) and
    ``messages/complete``."""
    yield "metadata", dumps({"run_id": run_id, "attempt": attempt})
    tuples = "messages-tuple" in modes
    legacy = "messages" in modes
    partial: dict[str, Any] = {}  # message id -> the message so far (legacy mode)
    # One model call's tokens share one metadata dict: its JSON is made once per call.
    meta: tuple[Any, str] = (None, "null")
    async with stream:
        async for item in stream:
            if len(item) == 3:
                ns, mode, chunk = item
                suffix = "|" + "|".join(ns) if ns else ""
            else:
                mode, chunk = item
                suffix = ""
            if mode != "messages":
                yield mode + suffix, dumps(chunk)
                continue
            if tuples:
                message, metadata = chunk
                if metadata is not meta[0]:
                    meta = (metadata, dumps(metadata))
                yield "messages" + suffix, f"[{dumps(message)},{meta[1]}]"
            if legacy:
                for entry in _legacy_messages(chunk, partial):
                    yield entry[0] + suffix, entry[1]


def _legacy_messages(chunk: Any, partial: dict[str, Any]) -> list[tuple[str, str]]:
    message, metadata = chunk
    key = getattr(message, "id", None) or ""
    out: list[tuple[str, str]] = []
    if key not in partial:
        if len(partial) >= 1024:  # a long run of many messages: keep this bounded
            partial.clear()
        out.append(("messages/metadata", dumps({key: {"metadata": metadata}})))
    if not isinstance(message, AIMessageChunk):
        partial.pop(key, None)
        out.append(("messages/complete", dumps([message])))
        return out
    so_far = partial.get(key)
    so_far = message if so_far is None else so_far + message
    partial[key] = so_far
    out.append(("messages/partial", dumps([so_far])))
    return out


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
                yield stream_mode, dumps(item)
            else:
                yield item[0], dumps(item[1])


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


def is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is this task being cancelled — not a node that raised the
    backend's cancellation exception (or ``SystemExit``, ``KeyboardInterrupt`` …) itself,
    which fails its run like any other error."""
    return (
        isinstance(exc, anyio.get_cancelled_exc_class())
        and anyio.current_effective_deadline() == -math.inf
    )


async def publish_stream(
    broker: Broker, run_id: str, stream: AsyncIterator[tuple[str, str]]
) -> None:
    """Publish every ``(event, JSON text)`` of ``stream`` to the run's log, in order.

    While one batch is on its way to the broker, the run goes on producing: the next
    batch takes all that arrived meanwhile, so a networked broker costs one round trip
    per batch, not per token, and an idle run still publishes each event at once. A
    bounded buffer between the two slows the run down if the broker falls behind.
    Raises whatever ``stream`` raised, as itself (a node's ``SystemExit`` too: raised
    here, in the caller's task, it can be handled; escaping a task it would stop the
    event loop).
    """
    send, receive = anyio.create_memory_object_stream[tuple[str, str]](_BATCH)
    failed: list[BaseException] = []

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
            except BaseException as exc:
                if is_cancellation(exc):
                    raise
                failed.append(exc)  # raised below, in the caller's task, as itself

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


@attrs.frozen
class Outcome:
    """How a run's execution ended: ``done``, ``error`` (with the ``error`` event's body)
    or ``cancelled``.

    Example::

        Outcome("error", {"type": "ValueError", "message": "boom"})
    """

    status: str
    body: Mapping[str, Any] | None = None

    @property
    def error(self) -> str | None:
        """The error as one line, ``Type: message`` (``None`` unless ``error``)."""
        if self.body is None:
            return None
        return f"{self.body.get('type')}: {self.body.get('message')}"


async def drive(broker: Broker, run_id: str, entries: AsyncIterator[tuple[str, str]]) -> Outcome:
    """Publish a run's entries until it ends.

    Anything the run raises makes an ``error`` outcome (a ``config["timeout"]`` that ran
    out is the core's ``RunTimeoutError``); only a real cancellation of the calling task
    propagates.
    """
    try:
        await publish_stream(broker, run_id, entries)
    except BaseException as exc:
        if is_cancellation(exc):
            raise
        message = str(exc) or repr(exc)
        return Outcome("error", {"type": type(exc).__name__, "message": message})
    return Outcome("done")


def terminal_entry(run_id: str, outcome: Outcome, reason: str | None = None) -> tuple[str, str]:
    """The ``(event, data)`` that ends a run's log for ``outcome``."""
    if outcome.status == "error":
        return "error", dumps(dict(outcome.body or {}))
    if outcome.status == "cancelled":
        return "cancelled", dumps({"run_id": run_id, "reason": reason or "cancel"})
    return "end", dumps({"run_id": run_id, "status": "done"})


async def rollback_thread(graph: CompiledGraph, thread_id: str, run_id: str) -> None:
    """Undo what run ``run_id`` wrote to its thread (multitask strategy ``rollback``).

    The checkpoint the thread had before the run is saved again as its newest (with its
    pending writes, so a thread paused by ``interrupt()`` stays paused); a thread the run
    created is deleted. The run's own checkpoints stay in the history, marked by the
    ``rollback`` checkpoint after them.
    """
    saver = graph.checkpointer
    if saver is None:
        return
    newest = await saver.alist(thread_id, limit=1)
    if not newest or newest[0].metadata.get("run_id") != run_id:
        return  # the run wrote nothing (or something else wrote since)
    before: str | None = None
    while True:
        page = await saver.alist(thread_id, limit=20, before=before)
        if not page:
            await saver.adelete_thread(thread_id)  # the thread began with this run
            return
        previous = next((c for c in page if c.metadata.get("run_id") != run_id), None)
        if previous is not None:
            break
        before = page[-1].id
    found = await saver.aget(thread_id, "", previous.id)
    checkpoint_id = new_checkpoint_id()
    await saver.aput(
        attrs.evolve(
            previous,
            id=checkpoint_id,
            parent_id=newest[0].id,
            metadata={**previous.metadata, "source": "rollback", "rolled_back_run": run_id},
            created_at=datetime.datetime.now(datetime.UTC).isoformat(),
        )
    )
    if found is not None and found.writes:
        await saver.aput_writes(thread_id, "", checkpoint_id, found.writes)
