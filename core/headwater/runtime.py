"""What runs: the :class:`Run` and :class:`Task` objects hooks receive, and the context
helpers nodes use (:func:`get_stream_writer`, :func:`get_config`).

The current run and task live in a :mod:`contextvars` variable, so code called anywhere
inside a node — sync or async, in a worker thread or not — emits into the right run.

Example::

    from headwater import get_stream_writer

    def node(state):
        get_stream_writer()({"progress": 0.5})
        return {"done": True}
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from random import getrandbits
from typing import Any

import anyio.from_thread
import anyio.lowlevel
import attrs

from headwater.errors import StreamWriterError
from headwater.events import ON_CUSTOM_EVENT, Event, Subscription

__all__ = [
    "NodeMiddleware",
    "new_id",
    "dispatch_event",
    "interrupt",
    "Run",
    "StreamWriter",
    "Task",
    "get_config",
    "get_stream_writer",
]


def new_id() -> str:
    """A fresh random run id in UUID4 form (ids need to be unique, not secret).

    Example::

        run_id = new_id()   # "8c0f…-…": also fine for thread ids
    """
    h = "%032x" % ((getrandbits(128) & _UUID_CLEAR) | _UUID_SET)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_UUID_CLEAR = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_UUID_SET = (0x4000 << 64) | (0x8000 << 48)


_NOBODY: tuple[Subscription, ...] = ()

_INBOX_LIMIT = 1024
"""Events a worker thread may queue for the event loop before it waits for them to be
delivered (and for consumers to have room): bounds memory, gives backpressure."""


class _Inbox:
    """Events emitted from worker threads (sync nodes), handed to the event loop in batches.

    The first event into an empty inbox schedules one drain on the loop without waiting
    (``run_sync_soon``); later events join that batch. So a sync node writing 50,000
    progress events pays one loop wake-up per batch, not per event, and its events still
    arrive at once when it writes only now and then. A full inbox makes the thread wait
    until the batch is delivered and consumers have room.
    """

    __slots__ = ("error", "items", "lock", "root", "token")

    def __init__(self, root: Run) -> None:
        self.root = root
        self.lock = threading.Lock()
        self.items: list[tuple[Run, tuple[Any, ...]]] = []
        self.token: anyio.lowlevel.EventLoopToken | None = None
        self.error: BaseException | None = None

    def put(self, run: Run, args: tuple[Any, ...]) -> None:
        """Queue one event from a worker thread (never called on the loop thread)."""
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        with self.lock:
            items = self.items
            items.append((run, args))
            count = len(items)
        token = self.token
        if count >= _INBOX_LIMIT or token is None:
            anyio.from_thread.run(self.deliver)
        elif count == 1:
            token.backend_class.run_sync_soon(self.drain, (), token.native_token)

    def drain(self) -> None:
        """Emit every queued event, in order, on the event-loop thread."""
        with self.lock:
            items, self.items = self.items, []
        for run, args in items:
            try:
                run.emit(*args)
            except BaseException as exc:  # re-raised in the emitting thread or its node
                if self.error is None:
                    self.error = exc

    async def deliver(self) -> None:
        """Drain, then wait until every consumer has room (backpressure)."""
        self.drain()
        await self.root.relieve()
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def settle(self, *, raise_errors: bool) -> None:
        """On the loop after a sync node returns: deliver what it left, raise what failed."""
        if self.items:
            self.drain()
        if self.error is not None:
            error, self.error = self.error, None
            if raise_errors:
                raise error


class Run:
    """One execution of a compiled graph, as hooks see it.

    Attributes: ``run_id``, ``graph_name``, ``config`` (the run's config dict), ``input``,
    ``ns`` (namespace, ``()`` for a root run), ``parent_ids`` (run ids of enclosing runs),
    ``parent`` (the enclosing :class:`Run` of a subgraph, else ``None``), ``tags`` and
    ``metadata`` (from the config), ``plugin_manager`` (the plugins this run uses).

    Example::

        @headwater.hookimpl
        def headwater_run_start(run):
            print(run.run_id, run.graph_name, run.config.get("configurable"))
    """

    __slots__ = (
        "_by_kind",
        "_direct_by_kind",
        "_inbox",
        "_loop_thread",
        "_root",
        "_seq",
        "_subs",
        "_valves",
        "config",
        "graph_name",
        "input",
        "metadata",
        "ns",
        "parent",
        "parent_ids",
        "plugin_manager",
        "run_id",
        "tags",
    )

    def __init__(
        self,
        *,
        graph_name: str,
        config: Mapping[str, Any],
        input: Any,
        run_id: str | None = None,
        parent: Run | None = None,
        ns: tuple[str, ...] = (),
        parent_ids: tuple[str, ...] = (),
    ) -> None:
        self.run_id = run_id or new_id()
        self.graph_name = graph_name
        self.config = config
        self.input = input
        self.ns = ns
        self.parent_ids = parent_ids
        self.tags: tuple[str, ...] = tuple(config.get("tags") or ())
        self.metadata: Mapping[str, Any] = config.get("metadata") or {}
        # A subgraph's run shares the root run's subscribers, sequence, valves and plugins.
        self.parent = parent
        self.plugin_manager: Any = parent.plugin_manager if parent is not None else None
        self._root: Run = parent._root if parent is not None else self
        self._subs: list[Subscription] = self._root._subs if parent is not None else []
        self._by_kind: dict[str, tuple[Subscription, ...]] = {}
        self._direct_by_kind: dict[str, Callable[[Any], None] | None] = {}
        self._seq: list[int] = self._root._seq if parent is not None else [0]
        self._valves: list[Callable[[], Awaitable[None] | None]] = (
            self._root._valves if parent is not None else []
        )
        self._loop_thread = threading.get_ident()
        self._inbox: _Inbox = parent._inbox if parent is not None else _Inbox(self)

    # -- subscriptions (resolved once per run) --------------------------------------

    def subscribe(self, subscription: Subscription) -> None:
        """Add a subscription before the run starts (``astream`` and hooks do this).

        Example::

            run.subscribe(Subscription(callback=print, kinds=frozenset({"on_chain_end"})))
        """
        self._subs.append(subscription)
        self._by_kind.clear()
        self._direct_by_kind.clear()

    def add_valve(self, valve: Callable[[], Awaitable[None] | None]) -> None:
        """Register a backpressure valve: awaited by producers at their await points.

        A consumer whose bounded queue is full returns an awaitable from ``valve()`` that
        completes when there is room again; ``None`` means no pressure.

        Example::

            run.add_valve(lambda: None if queue_has_room() else wait_for_room())
        """
        self._valves.append(valve)

    def direct(self, kind: str) -> Callable[[Any], None] | None:
        """A data-only sink for ``kind`` (see :attr:`Subscription.bind`), when this run's
        one subscription for it wants nothing but events' ``data``; else ``None``.

        Example::

            put = run.direct("task_end")
            if put is not None:
                put({"node": "a", "update": {...}, "error": None, "interrupt": None})
        """
        try:
            return self._direct_by_kind[kind]
        except KeyError:
            subs = self.subscriptions(kind)
            only = subs[0] if len(subs) == 1 else None
            put = None
            if only is not None and only.bind is not None and only.accept is None:
                put = only.bind(kind, self.ns)
            self._direct_by_kind[kind] = put
            return put

    def subscriptions(self, kind: str) -> tuple[Subscription, ...]:
        """The subscriptions that want ``kind`` (empty: nobody; do not build the event).

        Example::

            subs = run.subscriptions("on_custom_event")
            if subs:
                run.emit(subs, "on_custom_event", ...)
        """
        try:
            return self._by_kind[kind]
        except KeyError:
            found = tuple(s for s in self._subs if s.kinds is None or kind in s.kinds)
            self._by_kind[kind] = found or _NOBODY
            return found

    @property
    def streaming(self) -> bool:
        """Whether anything subscribed to this run's events."""
        return bool(self._subs)

    def emit(
        self,
        subs: tuple[Subscription, ...],
        kind: str,
        name: str,
        run_id: str,
        parent_ids: tuple[str, ...],
        tags: tuple[str, ...],
        metadata: Mapping[str, Any],
        data: Any,
    ) -> None:
        """Deliver one event to ``subs`` (from :meth:`subscriptions`), building it once.

        Safe to call from a worker thread started by the scheduler: events hop to the
        event-loop thread in order, in batches, and the thread waits when consumers fall
        far behind.

        Example::

            run.emit(subs, "on_custom_event", "node", task_id, (run.run_id,), (), {}, {"x": 1})
        """
        if threading.get_ident() != self._loop_thread:
            self._inbox.put(self, (subs, kind, name, run_id, parent_ids, tags, metadata, data))
            return
        event = None
        number = 0
        for sub in subs:
            accept = sub.accept
            if accept is not None and not accept(kind, name, tags, metadata):
                continue
            if not number:
                seq = self._seq
                seq[0] += 1
                number = seq[0]
            if sub.raw:
                sub.callback(kind, name, run_id, parent_ids, tags, metadata, data, number, self.ns)
                continue
            if event is None:
                event = Event(
                    event=kind,
                    name=name,
                    run_id=run_id,
                    parent_ids=parent_ids,
                    tags=tags,
                    metadata=metadata,
                    data=data,
                    seq=number,
                    ns=self.ns,
                )
            sub.callback(event)

    def threads_starting(self) -> None:
        """Called on the loop before a sync node starts in a worker thread: lets its
        events be handed back in batches (see :meth:`emit`)."""
        inbox = self._inbox
        if inbox.token is None:
            inbox.token = anyio.lowlevel.current_token()

    def threads_done(self, *, raise_errors: bool = True) -> None:
        """Called on the loop after a sync node's thread returns: its events are all
        delivered before anything the scheduler emits next (an error in delivering them
        is raised here, unless ``raise_errors`` is false)."""
        self._inbox.settle(raise_errors=raise_errors)

    async def relieve(self) -> None:
        """Wait until every consumer of this run has room again (backpressure)."""
        for valve in self._valves:
            waiting = valve()
            if waiting is not None:
                await waiting

    def __repr__(self) -> str:
        return f"Run(run_id={self.run_id!r}, graph_name={self.graph_name!r})"


@attrs.define(eq=False)
class Task:
    """One execution of one node in one superstep, as ``headwater_wrap_node`` sees it.

    Attributes: ``node`` (name), ``step``, ``input`` (the state, or a ``Send`` argument),
    ``triggers`` (what made it run), ``path`` (``("pull", node)`` for an edge,
    ``("push", i)`` for the i-th ``Send``), ``tags``, ``metadata`` (the node's own), ``run``,
    ``run_id`` (this execution's own id, the ``run_id`` of its events), ``config``.

    Example::

        async def log_middleware(call_next, task):
            print("running", task.node, "in step", task.step)
            return await call_next(task)
    """

    node: str
    step: int
    input: Any
    triggers: tuple[str, ...]
    path: tuple[str | int, ...]
    tags: tuple[str, ...]
    metadata: Mapping[str, Any]
    run: Run
    _run_id: str | None = attrs.field(default=None, alias="_run_id")
    _writer: StreamWriter | None = attrs.field(default=None, alias="_writer")
    _event_metadata: Mapping[str, Any] | None = attrs.field(default=None, alias="_event_metadata")
    _config: Mapping[str, Any] | None = attrs.field(default=None, alias="_config")
    checkpoint_task_id: str = ""
    resume: tuple[Any, ...] = ()
    _interrupts: int = attrs.field(default=0, alias="_interrupts")

    @property
    def config(self) -> Mapping[str, Any]:
        """The config this node sees: the run's, plus ``streamWriter`` and event metadata."""
        if self._config is None:
            self._config = {
                **self.run.config,
                "streamWriter": self.writer,
                "metadata": self.event_metadata,
            }
        return self._config

    @property
    def run_id(self) -> str:
        """This execution's own id: the ``run_id`` of its events (made on first use)."""
        if self._run_id is None:
            self._run_id = new_id()
        return self._run_id

    @property
    def writer(self) -> StreamWriter:
        """The stream writer attributed to this task."""
        if self._writer is None:
            self._writer = StreamWriter(self)
        return self._writer

    @property
    def event_metadata(self) -> Mapping[str, Any]:
        """Metadata carried by every event of this task (node, step, triggers, path, …)."""
        if self._event_metadata is None:
            configurable = self.run.config.get("configurable") or {}
            self._event_metadata = {
                **self.run.metadata,
                **self.metadata,
                "node": self.node,
                "step": self.step,
                "triggers": list(self.triggers),
                "path": list(self.path),
                "thread_id": configurable.get("thread_id"),
                "checkpoint_ns": "|".join(self.run.ns),
            }
        return self._event_metadata

    def dispatch(self, kind: str, data: Any, name: str | None = None) -> None:
        """Emit an event of ``kind`` attributed to this task (built only if wanted)."""
        run = self.run
        direct = run.direct(kind)
        if direct is not None and threading.get_ident() == run._loop_thread:
            direct(data)  # the one subscriber wants just the data: no id, no metadata
            return
        subs = run.subscriptions(kind)
        if subs:
            run.emit(
                subs,
                kind,
                self.node if name is None else name,
                self.run_id,
                (*run.parent_ids, run.run_id),
                self.event_tags,
                self.event_metadata,
                data,
            )

    @property
    def event_tags(self) -> tuple[str, ...]:
        """Tags carried by every event of this task: the run's, then the node's."""
        return self.run.tags + self.tags if self.run.tags else self.tags


NodeMiddleware = Callable[[Callable[[Task], Awaitable[Any]], Task], Awaitable[Any]]
"""``async def middleware(call_next, task) -> update`` returned by ``headwater_wrap_node``."""


class StreamWriter:
    """Emits custom stream events from inside a node: ``writer(payload)``.

    ``writer(payload)`` and ``writer("custom", payload)`` are the same call. The same
    writer is available as ``config["streamWriter"]``, from :func:`get_stream_writer`, and
    as an injected ``writer`` keyword parameter of a node. Works in sync nodes running in
    worker threads too.

    Example::

        def node(state, *, writer):
            writer({"progress": 0.5})
            writer("custom", {"progress": 1.0})
            return {}
    """

    __slots__ = ("_direct", "_header", "_subs", "_task")

    def __init__(self, task: Task) -> None:
        self._task = task
        self._subs: tuple[Subscription, ...] | None = None
        self._direct: Callable[[Any], None] | None = None  # see Subscription.bind
        self._header: tuple[str, str, tuple[str, ...], tuple[str, ...], Mapping[str, Any]] = (
            "",
            "",
            (),
            (),
            {},
        )

    def __call__(self, *args: Any) -> None:
        if len(args) == 1:
            payload = args[0]
        elif len(args) == 2 and args[0] == "custom":
            payload = args[1]
        else:
            raise StreamWriterError(
                f"A stream writer takes writer(payload) or writer('custom', payload); got "
                f"{len(args)} argument(s)"
                f"{' with mode ' + repr(args[0]) if len(args) == 2 else ''}."
            )
        direct = self._direct
        if direct is not None and threading.get_ident() == self._task.run._loop_thread:
            direct(payload)  # fast path: the run's one subscriber wants just the payload
            return
        subs = self._subs
        if subs is None:  # resolved once: a run's subscriptions are fixed when it starts
            task = self._task
            run = task.run
            subs = self._subs = run.subscriptions(ON_CUSTOM_EVENT)
            if subs:
                self._header = (
                    task.node,
                    task.run_id,
                    (*run.parent_ids, run.run_id),
                    task.event_tags,
                    task.event_metadata,
                )
                self._direct = run.direct(ON_CUSTOM_EVENT)
        if subs:
            node, run_id, parent_ids, tags, metadata = self._header
            self._task.run.emit(
                subs, ON_CUSTOM_EVENT, node, run_id, parent_ids, tags, metadata, payload
            )

    def __repr__(self) -> str:
        return f"StreamWriter(node={self._task.node!r})"


current_task: ContextVar[Task | None] = ContextVar("headwater_current_task", default=None)


def _active_task(what: str) -> Task:
    task = current_task.get()
    if task is None:
        raise StreamWriterError(
            f"{what} was called outside a running node: no run is active in this context. "
            "Call it from inside a node function (or code a node calls) while the graph runs."
        )
    return task


def interrupt(value: Any = None) -> Any:
    """Pause the run here until a human (or anything) answers; returns the answer.

    The first time, this raises :class:`~headwater.errors.GraphInterrupt`: the run stops
    and ``value`` reaches the stream (an ``on_interrupt`` event, ``{"__interrupt__": ...}``
    in ``updates``). Continue the thread with ``Command(resume=answer)`` as input: the
    node runs again from its start, and this call returns ``answer``. Needs a
    checkpointer; calls are matched to answers by their order within the node.

    Example::

        from headwater import interrupt

        def review(state):
            verdict = interrupt({"question": "Publish?", "draft": state["draft"]})
            return {"published": verdict == "yes"}
    """
    from headwater.checkpoint import Interrupt
    from headwater.errors import GraphInterrupt

    task = _active_task("interrupt()")
    index = task._interrupts
    task._interrupts += 1
    if index < len(task.resume):
        return task.resume[index]
    raise GraphInterrupt(
        Interrupt(value=value, id=f"{task.checkpoint_task_id}:{index}", node=task.node)
    )


def dispatch_event(kind: str, data: Any, *, name: str | None = None) -> None:
    """Emit an event of ``kind`` from code running inside a node (adapters, tools).

    The event is attributed to the current node (its run id is the parent, its tags and
    metadata are carried); ``name`` defaults to the node's name. Nothing is built when no
    consumer wants ``kind``. Raises :class:`~headwater.errors.StreamWriterError` outside
    a running node.

    Example::

        from headwater.runtime import dispatch_event

        def node(state):
            dispatch_event("on_chat_model_stream", {"chunk": chunk})
            return {}
    """
    _active_task("dispatch_event()").dispatch(kind, data, name)


def get_stream_writer() -> StreamWriter:
    """The stream writer of the node running in the current context.

    Raises :class:`~headwater.errors.StreamWriterError` outside a running node.

    Example::

        from headwater import get_stream_writer

        async def node(state):
            write = get_stream_writer()
            write({"status": "working"})
            return {}
    """
    return _active_task("get_stream_writer()").writer


def get_config() -> Mapping[str, Any]:
    """The config of the node running in the current context (with ``streamWriter``).

    Raises :class:`~headwater.errors.StreamWriterError` outside a running node.

    Example::

        def node(state):
            thread = get_config()["configurable"].get("thread_id")
            return {}
    """
    return _active_task("get_config()").config
