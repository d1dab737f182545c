"""Executing a run into its broker log: the pieces the server and the workers share.

Every run's events are published to a :class:`~headwater.broker.Broker` log (in-process
``memory:`` by default, Redis across instances). Clients read the log from any position
(``Last-Event-ID``), so a client can join late, reconnect to any server, or leave while
the run continues. A log ends with one terminal entry: ``end``, ``error`` or
``cancelled``.

A run reaches its log in one pass (:func:`open_run_stream`, :func:`publish_run`): its
stream modes' projections subscribe to the run's bus, each chunk is encoded straight into
its entry as it is projected, and the entries go through the stream's one bounded queue
to the publisher, which sends them to the broker in batches.
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import attrs

from headwater import Command, CompiledGraph, Send
from headwater.broker import Broker, BrokerError
from headwater.checkpoint import new_checkpoint_id
from headwater.events import Chunks
from headwater.messages import AIMessageChunk
from headwater.sinks import RunStream, open_encoded_stream

from ._wire import EventEncoder, dumps

__all__ = [
    "PUBLISH_BUDGET",
    "TERMINAL",
    "Outcome",
    "ProtocolEncoder",
    "RunOutput",
    "drive",
    "encode_json",
    "is_cancellation",
    "open_run_stream",
    "publish",
    "publish_batch",
    "publish_run",
    "rollback_thread",
    "terminal_entry",
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


@attrs.define(eq=False)
class RunOutput:
    """A run opened for its broker log (by :func:`open_run_stream`), not yet started.

    ``stream`` yields the run's log entries, ``(event, JSON text)``, already encoded: its
    stream modes' projections subscribe to the run's bus and each chunk is encoded into
    its entry as it is projected (:func:`headwater.sinks.open_encoded_stream`), then
    queued on the stream's one bounded queue. ``head`` goes first (the protocol's
    ``metadata`` entry).

    Example::

        output = open_run_stream(graph, input, config, {"stream_mode": "updates"})
        outcome = await drive(broker, run_id, output)
    """

    stream: RunStream
    head: list[tuple[str, str]] = attrs.field(factory=list)

    async def aclose(self) -> None:
        """Cancel the run if it is going (or release it, never started)."""
        await self.stream.aclose()


def open_run_stream(
    graph: CompiledGraph,
    input: Any,
    config: Mapping[str, Any],
    spec: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> RunOutput:
    """Open (without starting) the run a request asked for, encoded into its log entries:
    stream modes, or ``astream_events`` with filters, or the LangGraph server protocol's
    modes (:class:`ProtocolEncoder`). ``extra`` goes into every ``astream_events``
    entry's ``_event`` and the protocol's ``metadata`` (a worker's ``attempt``). Raises
    the core's errors for a bad mode or filter."""
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
        attempt = int((extra or {}).get("attempt", 1))
        stream = open_encoded_stream(
            graph,
            input,
            config,
            ProtocolEncoder(protocol["modes"]),
            stream_mode=list(mode or ()),
            subgraphs=bool(protocol.get("subgraphs")),
        )
        head = [("metadata", dumps({"run_id": config.get("run_id"), "attempt": attempt}))]
        return RunOutput(stream, head)
    if mode is not None:
        return RunOutput(open_encoded_stream(graph, input, config, _encode_chunk, stream_mode=mode))
    filters = {k: spec[k] for k in _FILTER_KEYS if spec.get(k) is not None}
    events = EventEncoder(extra)

    def encode_event(mode: str, ns: tuple[str, ...], event: Any) -> tuple[str, str]:
        return event["event"], events(event)

    return RunOutput(
        open_encoded_stream(
            graph, input, config, encode_event, filters=spec.get("filters"), **filters
        )
    )


def _encode_chunk(mode: str, ns: tuple[str, ...], chunk: Any) -> tuple[str, str]:
    """A stream mode's chunk as headwater's own routes log it: the entry is named by the mode."""
    return mode, dumps(chunk)


def _goto(goto: Any) -> Any:
    """A protocol command's ``goto`` (a node, ``{"node", "input"}``, or a list of them)."""
    if goto is None:
        return ()
    if isinstance(goto, dict):
        return Send(goto["node"], goto.get("input"))
    if isinstance(goto, list):
        return tuple(_goto(g) for g in goto)
    return goto


class ProtocolEncoder:
    """Chunks as the LangGraph server protocol's entries: ``<mode>`` or
    ``<mode>|<namespace>`` for each chunk (the ``metadata`` entry comes first, see
    :func:`open_run_stream`). ``messages-tuple`` is the core's ``messages`` as
    ``[chunk, metadata]`` (event ``messages``); the protocol's ``messages`` mode sends
    ``messages/metadata``, ``messages/partial`` (the message so far) and
    ``messages/complete``. Made per run: it remembers the messages so far.

    Example::

        encode = ProtocolEncoder(["updates", "messages-tuple"])
        encode("updates", (), {"node": {"x": 1}})  # ("updates", '{"node":{"x":1}}')
    """

    __slots__ = ("_legacy", "_meta", "_partial", "_suffixes", "_tuples")

    def __init__(self, modes: list[str]) -> None:
        self._tuples = "messages-tuple" in modes
        self._legacy = "messages" in modes
        self._partial: dict[str, Any] = {}  # message id -> the message so far (legacy)
        # One model call's tokens share one metadata dict: its JSON is made once per call.
        self._meta: tuple[Any, str] = (None, "null")
        self._suffixes: dict[tuple[str, ...], str] = {(): ""}

    def __call__(self, mode: str, ns: tuple[str, ...], chunk: Any) -> Any:
        suffix = self._suffixes.get(ns)
        if suffix is None:
            if len(self._suffixes) >= 1024:  # many subgraph runs: keep this bounded
                self._suffixes = {(): ""}
            suffix = self._suffixes[ns] = "|" + "|".join(ns)
        if mode != "messages":
            return mode + suffix, dumps(chunk)
        if not self._legacy:
            return "messages" + suffix, self._tuple(chunk)
        out: list[tuple[str, str]] = []
        if self._tuples:
            out.append(("messages" + suffix, self._tuple(chunk)))
        for event, data in _legacy_messages(chunk, self._partial):
            out.append((event + suffix, data))
        return Chunks(out)

    def _tuple(self, chunk: Any) -> str:
        message, metadata = chunk
        meta = self._meta
        if metadata is not meta[0]:
            meta = self._meta = (metadata, dumps(metadata))
        return f"[{dumps(message)},{meta[1]}]"


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


async def publish_run(
    broker: Broker,
    run_id: str,
    output: RunOutput,
    count: Callable[[list[tuple[str, str]]], None] | None = None,
) -> None:
    """Start the run of ``output`` and publish its entries to the run's log, in order.

    The run's entries reach this publisher through the stream's one bounded queue, in
    batches: while one batch is on its way to the broker, the run goes on producing, and
    the next batch takes all that arrived meanwhile, so a networked broker costs one
    round trip per batch, not per token, and an idle run still publishes each event at
    once. When the broker falls behind, the queue fills and the run waits at its next
    await point. ``count(batch)`` sees each batch first (the token metrics). Raises
    whatever the run raised, as itself.
    """
    stream = output.stream
    async with stream:
        if output.head:
            await publish_batch(broker, run_id, output.head)
        turn = time.monotonic() + _TURN
        while (batch := await stream.next_batch(_BATCH)) is not None:
            if count is not None:
                count(batch)
            await publish_batch(broker, run_id, batch)
            if time.monotonic() >= turn:
                # A broker that never waits (memory:) and a run that keeps producing
                # would otherwise hold the loop: let the run's clients read. When nothing
                # is ready, the next batch waits for the run anyway (a paced run: the
                # loop is free between its tokens), so a yield would be one more
                # scheduling round per token for nothing.
                if stream.ready:
                    await anyio.lowlevel.checkpoint()
                turn = time.monotonic() + _TURN


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


async def drive(
    broker: Broker,
    run_id: str,
    output: RunOutput,
    count: Callable[[list[tuple[str, str]]], None] | None = None,
) -> Outcome:
    """Run ``output`` and publish its entries until it ends (:func:`publish_run`).

    Anything the run raises makes an ``error`` outcome (a ``config["timeout"]`` that ran
    out is the core's ``RunTimeoutError``); only a real cancellation of the calling task
    propagates.
    """
    try:
        await publish_run(broker, run_id, output, count)
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
