"""The event bus's public types: what subscribers, stream modes and filters receive.

Every observable thing in a run is an :class:`Event`. Plugins see events through
:class:`Subscription` callbacks (``headwater_event_subscribers``), shape them into stream
chunks with :class:`StreamMode` (``headwater_stream_modes``) and select them with
:class:`EventFilter` (``headwater_event_filters``).

Kinds whose name starts with ``on_`` are the public ``astream_events`` kinds; the others
(``step_end``, ``task_start``, ``task_end``) are bus-internal and feed stream modes such
as ``values``, ``updates`` and ``debug``.

Example::

    from headwater.events import Subscription

    seen = []
    sub = Subscription(callback=seen.append, kinds=frozenset({"on_chain_end"}))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs

__all__ = [
    "CORE_KINDS",
    "ON_CHAIN_END",
    "ON_CHAIN_ERROR",
    "ON_CHAIN_START",
    "ON_CHAIN_STREAM",
    "ON_CUSTOM_EVENT",
    "PUBLIC_KINDS",
    "SKIP",
    "CHECKPOINT",
    "INTERRUPT",
    "ON_INTERRUPT",
    "STEP_END",
    "TASK_END",
    "TASK_START",
    "Accept",
    "Chunks",
    "Event",
    "EventFilter",
    "StreamMode",
    "Subscription",
]

ON_CHAIN_START: Final = "on_chain_start"
"""A graph run or a node execution started. ``data = {"input": ...}``."""
ON_CHAIN_END: Final = "on_chain_end"
"""A graph run or a node execution finished. ``data = {"output": ...}``."""
ON_CHAIN_STREAM: Final = "on_chain_stream"
"""A node finished and produced its output, or the graph received a node's update.

As in LangGraph: named after the node, ``data = {"chunk": <what the node returned>}``,
right before its ``on_chain_end``; then, named after the (root) graph,
``data = {"chunk": {node: update}}`` — the ``updates`` chunk (``None`` for a node that
wrote nothing; ``{"__interrupt__": ...}`` when the run pauses).
"""
ON_CHAIN_ERROR: Final = "on_chain_error"
"""A node execution, then its graph run, failed. ``data = {"error": exception}``."""
ON_CUSTOM_EVENT: Final = "on_custom_event"
"""A stream writer was called inside a node. ``data`` is the payload."""
STEP_END: Final = "step_end"
"""Bus-internal: a superstep's writes were applied. ``data = {"step", "values", "writes"}``.

``values`` is the full state after the step (the input is step 0); ``writes`` maps each
node that wrote something to the tuple of updates it returned, in the order they were
applied. ``writes`` is ``None`` for the state outside a step's end: the thread's saved
state, which a run that resumes it (input ``None`` or ``Command(resume=...)``) starts
with; and the state with the pending interrupts under ``"__interrupt__"``, which a run
paused by ``interrupt()`` ends with.
"""

TASK_START: Final = "task_start"
"""Bus-internal: a task (one node execution) starts. ``data = {"input", "triggers"}``."""
TASK_END: Final = "task_end"
"""Bus-internal: a task finished. ``data = {"node", "update", "error", "interrupt"}``.

``update`` is the mapping the node returned (a ``Command``'s ``update``; ``None`` for no
update); ``error`` is the exception it raised, or ``None``; ``interrupt`` is the
:class:`~headwater.checkpoint.Interrupt` that paused it (it ends without an update and
runs again on resume), or ``None``. When a run pauses, one more ``task_end`` named
:data:`INTERRUPT` carries all of the step's interrupts as its ``update`` (the ``updates``
mode's ``{"__interrupt__": ...}`` chunk); it had no ``task_start``.
"""

INTERRUPT: Final = "__interrupt__"
"""The name of the ``task_end`` that sums up a paused run's interrupts, and the key under
which a paused run's result (and the ``updates`` stream) carries them.

Example::

    paused = app.invoke(state, config)
    paused[INTERRUPT][0].value          # what interrupt(value) asked
"""

CHECKPOINT: Final = "checkpoint"
"""Bus-internal: a checkpoint was saved. ``data`` is the snapshot dict of ``checkpoints``."""
ON_INTERRUPT: Final = "on_interrupt"
"""The run paused: ``interrupt(value)`` or ``interrupt_before/after``.

``data = {"value", "id", "node"}``; continue with ``Command(resume=...)`` or input None.
"""

_CHAIN_KINDS = frozenset(
    {ON_CHAIN_START, ON_CHAIN_STREAM, ON_CHAIN_END, ON_CHAIN_ERROR, ON_CUSTOM_EVENT, ON_INTERRUPT}
)

CORE_KINDS: Final = _CHAIN_KINDS | {STEP_END, TASK_START, TASK_END, CHECKPOINT}
"""The kinds the core scheduler emits itself (models, tools and retrievers add more)."""

PUBLIC_KINDS: Final = _CHAIN_KINDS | {
    "on_chat_model_start",
    "on_chat_model_stream",
    "on_chat_model_end",
    "on_chat_model_error",
    "on_tool_start",
    "on_tool_end",
    "on_tool_error",
    "on_retriever_start",
    "on_retriever_end",
    "on_retriever_error",
}
"""Every kind ``astream_events`` yields (the seed's event table, plus ``*_error``)."""

Accept = Callable[[str, str, tuple[str, ...], Mapping[str, Any]], bool]
"""``accept(kind, name, tags, metadata) -> bool``: decides before an event is built."""


class _Skip:
    __slots__ = ()

    def __repr__(self) -> str:
        return "SKIP"


SKIP: Final = _Skip()
"""Returned by a :class:`StreamMode` projection for an event that yields no chunk."""


class Chunks(tuple[Any, ...]):
    """Returned by a :class:`StreamMode` projection for an event that yields several
    chunks: they are streamed in this order (an empty ``Chunks`` is the same as SKIP).

    Example::

        def project(event):
            messages = event.data["update"].get("messages", [])
            return Chunks((m, event.metadata) for m in messages)
    """

    __slots__ = ()


@attrs.frozen(slots=True, kw_only=True)
class Event:
    """One thing that happened in a run.

    ``seq`` increases by one per event within a root run (including its subgraphs), so
    consumers can order and de-duplicate events — events that only ever reach bound
    data-only callables (:attr:`Subscription.bind`, :attr:`Subscription.bind_source`:
    a model's tokens on the fast path) take none; ``ns`` is the namespace of the
    (sub)graph that emitted it (``()`` for the root graph).

    Example::

        event.event        # "on_chain_end"
        event.name         # "summarize_node"
        event.to_dict()    # the astream_events shape: {"event", "name", "run_id", ...}
    """

    event: str
    name: str
    run_id: str
    parent_ids: tuple[str, ...]
    tags: tuple[str, ...]
    metadata: Mapping[str, Any]
    data: Any
    seq: int
    ns: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The ``astream_events`` dict shape of this event.

        Example::

            {"event": "on_chain_start", "name": "process", "run_id": "…",
             "parent_ids": ["…"], "tags": ["critical"], "metadata": {"node": "process", …},
             "data": {"input": {…}}}
        """
        return {
            "event": self.event,
            "name": self.name,
            "run_id": self.run_id,
            "parent_ids": list(self.parent_ids),
            "tags": list(self.tags),
            "metadata": dict(self.metadata),
            "data": self.data,
        }


@attrs.frozen
class Subscription:
    """A callback for a run's events, returned by ``headwater_event_subscribers``.

    ``kinds`` lists the event kinds wanted (``None``: every kind). ``accept``, if given,
    is asked ``accept(kind, name, tags, metadata)`` before the event is built. The emitter
    calls ``callback(event)`` synchronously on the event-loop thread for each matching
    event; an event no subscription wants is never built.

    Example::

        Subscription(callback=lambda e: print(e.event, e.name),
                     kinds=frozenset({"on_chain_start", "on_chain_end"}))
    """

    callback: Callable[..., None]
    kinds: frozenset[str] | None = None
    accept: Accept | None = None
    raw: bool = False
    """``True``: ``callback(kind, name, run_id, parent_ids, tags, metadata, data, seq, ns)``
    gets the fields instead of an :class:`Event`, which is then never built for it (the
    fast path of stream modes that need only an event's data)."""
    bind: Callable[[str, tuple[str, ...]], Callable[[Any], None] | None] | None = None
    """Optional, for the hottest emitters (a node's stream writer): ``bind(kind, ns)``
    returns a callable taking only an event's ``data``, for a subscription that needs
    nothing else of events of that kind from that namespace (no sequence number either),
    or ``None``. An emitter may call it instead of ``callback`` when this is the run's
    only subscription for the kind."""
    bind_source: (
        Callable[[str, tuple[str, ...], Any], Callable[[Any], bool | None] | None] | None
    ) = None
    """Optional, for a source emitting many events of one kind (a chat model's tokens):
    ``bind_source(kind, ns, header)`` returns a callable taking only an event's ``data``
    for that source's events of ``kind`` — ``header`` is ``(name, run_id, parent_ids,
    tags, metadata)``, the same for all of them — or ``None`` to get them through
    ``callback`` as usual.

    Asked once per source, when *every* subscription for the kind has a ``bind_source``;
    the source's events then go to the bound callables alone (in subscription order),
    never to ``callback``, and take no sequence number. If any of them returns ``None``,
    all subscriptions get the source's events through their ``callback``, so a
    ``bind_source`` may be asked and its callable dropped: it must change nothing until
    the callable is called. ``accept`` is not asked for bound events: ``bind_source``
    applies it itself, once, and returns a callable that ignores the data if it does not
    want the source. The callable returns ``None`` (or false); it returns true once it
    wants none of the source's later events of the kind — after the first token, for a
    tracer timing it — and must still ignore them if they come: the emitter stops making
    them only when no subscription wants them. So a subscription that needs a little of
    each source binds a callable that is cheap to call, and does not take the fast path
    away from the others.

    Example::

        def bind_source(kind, ns, header):
            name, run_id, parent_ids, tags, metadata = header

            def put(data):            # each of this call's events: nothing but the data
                seen = counts.get(run_id, 0)
                if seen < 10:         # the first ten are enough
                    counts[run_id] = seen + 1
                return seen + 1 >= 10

            return put

        Subscription(callback=count_one, kinds=frozenset({"on_chat_model_stream"}),
                     raw=True, bind_source=bind_source)
    """


@attrs.frozen
class StreamMode:
    """A projection of events into the chunks of one ``stream_mode``, made once per run.

    ``project(event)`` is called for every event whose kind is in ``kinds`` and returns
    the chunk to yield, :data:`SKIP`, or :class:`Chunks` for several; with
    ``data_only=True`` it is called with the event's ``data`` alone (and returns one
    chunk or SKIP).

    Example::

        def node_names(run):
            return StreamMode(kinds=frozenset({"on_chain_start"}),
                              project=lambda e: e.name if "node" in e.metadata else SKIP)
    """

    kinds: frozenset[str]
    project: Callable[[Any], Any]
    data_only: bool = False
    """``True``: ``project`` receives ``event.data`` alone and no :class:`Event` is built
    for it — the cheapest projection, for modes such as ``custom`` and ``values``."""
    needs_checkpointer: bool = False
    """``True``: asking for this mode on a graph without a checkpointer is an error."""
    bind: Callable[..., Callable[[Any], Any] | None] | None = None
    """Optional fast path: ``bind(kind, name, run_id, parent_ids, tags, metadata, ns)``
    returns a projection of ``data`` alone for the events of one source (one chat-model
    call), equal to ``project`` on each of its events, or ``None`` to use ``project``."""
    finish: Callable[[Any], Any] | None = None
    """Optional: what the consumer gets for a chunk, applied when it takes the chunk from
    the run's queue (a stream of this one mode, not nested). ``project`` and ``bind``
    may then queue a compact form, so that what waits for a slow consumer is small;
    ``finish`` must accept every chunk they return."""


@attrs.frozen
class EventFilter:
    """A named event filter's per-run form, made by a ``headwater_event_filters`` factory.

    Three stages, cheapest first; each ``None`` lets everything through:

    * ``kinds``: only these kinds can pass — known at run start, so excluded kinds are
      never built at all;
    * ``accept(kind, name, tags, metadata) -> bool``: decided before the event is built;
    * ``predicate(event) -> bool``: decided on the built :class:`Event`.

    Example::

        EventFilter(kinds=frozenset({"on_chat_model_stream"}),
                    accept=lambda kind, name, tags, metadata: "analyzer" in name)
    """

    kinds: frozenset[str] | None = None
    accept: Accept | None = None
    predicate: Callable[[Event], bool] | None = None
    any_of: str | None = None
    """Filters given as ``astream_events`` keyword arguments in the same ``any_of`` group
    pass an event when any one of them does (``headwater-filters`` puts its ``include_*``
    filters in group ``"include"``); all other filters must each pass."""
