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
from typing import TYPE_CHECKING, Any, NoReturn

import attrs

from headwater._bus import Bus, Emitter, Header
from headwater._ids import new_id
from headwater.checkpoint import Interrupt
from headwater.errors import GraphInterrupt, StreamWriterError
from headwater.events import ON_CUSTOM_EVENT, Subscription

if TYPE_CHECKING:
    from headwater._plugins import PluginManager

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


class Run:
    """One execution of a compiled graph, as hooks see it.

    Attributes: ``run_id``, ``graph_name``, ``config`` (the run's config dict), ``input``,
    ``ns`` (namespace, ``()`` for a root run), ``parent_ids`` (run ids of enclosing runs),
    ``parent`` (the enclosing :class:`Run` of a subgraph, else ``None``), ``tags`` and
    ``metadata`` (from the config), ``plugin_manager`` (the plugins this run uses), and
    ``bus``, the run's event bus: ``run.bus.subscribe(subscription)`` before the run
    starts, ``run.bus.emitter(header)`` to emit, ``run.bus.pressure()`` for backpressure.
    A subgraph's run shares its root run's subscriptions, sequence numbers and plugins.

    Example::

        @headwater.hookimpl
        def headwater_run_start(run):
            print(run.run_id, run.graph_name, run.config.get("configurable"))
    """

    __slots__ = (
        "bus",
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
        plugin_manager: PluginManager | None = None,
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
        self.parent = parent
        if parent is not None:
            self.plugin_manager: PluginManager = parent.plugin_manager
            self.bus: Bus = parent.bus.child(ns)
        else:
            if plugin_manager is None:
                raise TypeError("A root Run needs its plugin_manager.")
            self.plugin_manager = plugin_manager
            self.bus = Bus(ns)

    def __repr__(self) -> str:
        return f"Run(run_id={self.run_id!r}, graph_name={self.graph_name!r})"


@attrs.define(eq=False)
class Task:
    """One execution of one node in one superstep, as ``headwater_wrap_node`` sees it.

    Attributes: ``node`` (name), ``step``, ``input`` (the state, or a ``Send`` argument),
    ``triggers`` (what made it run), ``path`` (``("pull", node)`` for an edge,
    ``("push", i)`` for the i-th ``Send``), ``tags``, ``metadata`` (the node's own), ``run``,
    ``run_id`` (this execution's own id, the ``run_id`` of its events), ``config``,
    ``timed`` (a run or node timeout bounds it).

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
    _emitter: Emitter | None = attrs.field(default=None, alias="_emitter")
    timed: bool = False
    """Whether a timeout (the run's or the node's) bounds this task: its sync calls in
    worker threads are abandoned, not waited for, when it is cancelled."""

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
        """The stream writer attributed to this task (one that only checks its arguments
        when nothing in the run wants custom events: subscriptions are fixed at start)."""
        writer = self._writer
        if writer is None:
            if self.run.bus.subscriptions(ON_CUSTOM_EVENT):
                writer = StreamWriter(self)
            else:
                writer = _QUIET_WRITER
            self._writer = writer
        return writer

    @property
    def event_metadata(self) -> Mapping[str, Any]:
        """Metadata carried by every event of this task (node, step, triggers, path, …)."""
        if self._event_metadata is None:
            configurable = self.run.config.get("configurable") or {}
            ns = self.run.ns
            self._event_metadata = {
                **self.run.metadata,
                **self.metadata,
                "node": self.node,
                "step": self.step,
                "triggers": list(self.triggers),
                "path": list(self.path),
                "thread_id": configurable.get("thread_id"),
                "checkpoint_ns": "|".join(ns),
                # The same facts under LangGraph's keys and in LangGraph's form, so code
                # (and front ends) written against ``metadata["langgraph_node"]`` work.
                "langgraph_step": self.step,
                "langgraph_node": self.node,
                "langgraph_triggers": _langgraph_triggers(self.node, self.triggers),
                "langgraph_path": _langgraph_path(self.path),
                "langgraph_checkpoint_ns": "|".join((*ns, f"{self.node}:{self.run_id}")),
            }
        return self._event_metadata

    @property
    def emitter(self) -> Emitter:
        """The emitter of this task's events: named after the node, with the task's run
        id, the run's ids as parents, :attr:`event_tags` and :attr:`event_metadata`
        (made on the first event that needs them).

        Example::

            task.emitter.emit("on_custom_event", {"progress": 0.5})
        """
        if self._emitter is None:
            self._emitter = Emitter(self.run.bus, None, self._header)
        return self._emitter

    def _header(self) -> Header:
        run = self.run
        return (
            self.node,
            self.run_id,
            (*run.parent_ids, run.run_id),
            self.event_tags,
            self.event_metadata,
        )

    @property
    def event_tags(self) -> tuple[str, ...]:
        """Tags carried by every event of this task: the run's, then the node's."""
        return self.run.tags + self.tags if self.run.tags else self.tags


def _langgraph_triggers(node: str, triggers: tuple[str, ...]) -> list[str]:
    """A task's triggers named as LangGraph names its channels: ``branch:to:<node>`` for an
    edge or a router, ``join:a+b:<node>`` for a join, ``__pregel_push`` for a ``Send``."""
    out: list[str] = []
    for trigger in triggers:
        if trigger.startswith("send:"):
            name = "__pregel_push"
        elif trigger.startswith("join:"):
            name = f"{trigger}:{node}"
        else:
            name = f"branch:to:{node}"
        if name not in out:
            out.append(name)
    return out


def _langgraph_path(path: tuple[str | int, ...]) -> list[str | int | bool]:
    """A task's path in LangGraph's form: ``["__pregel_pull", node]`` for a node an edge
    triggered, ``["__pregel_push", i, False]`` for the i-th ``Send``."""
    if path[:1] == ("push",):
        return ["__pregel_push", *path[1:], False]
    return ["__pregel_pull", *path[1:]]


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

    __slots__ = ("_direct", "_emitter", "_mark", "_stalls", "_subs", "_task", "_thread", "_written")

    def __init__(self, task: Task) -> None:
        self._task = task
        self._emitter: Emitter | None = None
        self._subs: tuple[Subscription, ...] | None = None
        self._direct: Callable[[Any], None] | None = None  # see Subscription.bind
        self._thread = 0
        self._written = 0  # events written on the event loop's thread
        self._mark = 0  # the bus's wakeups when the consumer was last seen behind
        self._stalls = 0  # checks since then that found it behind, the node never paused

    async def awrite(self, *args: Any) -> None:
        """Write as ``writer(...)`` does, then wait while the consumer is behind.

        For an async node that writes many events: ``writer(...)`` is a plain call, so an
        async node is held back only where it awaits. ``await writer.awrite(...)`` waits
        only when a consumer's queue is full, and costs no trip through the event loop
        otherwise.

        Example::

            async def node(state, *, writer):
                for i in range(100_000):
                    await writer.awrite({"progress": i})
                return {}
        """
        self(*args)
        waiting = self._task.run.bus.pressure()
        if waiting is not None:
            await waiting

    def __call__(self, *args: Any) -> None:
        if len(args) == 1:
            payload = args[0]
        elif len(args) == 2 and args[0] == "custom":
            payload = args[1]
        else:
            _bad_arguments(args)
        direct = self._direct
        if direct is None and self._subs is None:  # first call: resolved once, as a
            self._resolve()  # run's subscriptions are fixed when it starts
            direct = self._direct
        if direct is not None:  # fast path: the run's one subscriber wants just the payload
            if threading.get_ident() != self._thread:  # a sync node's thread: the inbox
                self._task.run.bus.put_from_thread(direct, payload)  # (it waits itself)
                return
            direct(payload)
        elif self._subs:
            assert self._emitter is not None
            self._emitter.emit_to(self._subs, ON_CUSTOM_EVENT, payload)
            if threading.get_ident() != self._thread:  # (a sync node's thread waits itself)
                return
        else:
            return
        self._written = written = self._written + 1
        if not written & _CHECK_MASK:
            self._check_flood()

    def _resolve(self) -> None:
        bus = self._task.run.bus
        self._subs = bus.subscriptions(ON_CUSTOM_EVENT)
        if self._subs:
            self._emitter = self._task.emitter
            self._thread = bus.loop_thread
            self._direct = bus.direct(ON_CUSTOM_EVENT)

    def _check_flood(self) -> None:
        """Every 1,024 writes on the loop: refuse to pile up events for a consumer that
        is behind when the node has not suspended once in :data:`_STALL_LIMIT` checks
        (it cannot be made to wait: it never awaits)."""
        bus = self._task.run.bus
        if not bus.flooding():
            self._stalls = 0
            return
        wakeups = bus.wakeups
        if wakeups != self._mark:  # the node paused (and waited for room) since
            self._mark = wakeups
            self._stalls = 0
            return
        self._stalls += 1
        if self._stalls >= _STALL_LIMIT:
            self._stalls = 0
            raise StreamWriterError(
                f"Node {self._task.node!r} wrote over {_STALL_LIMIT * (_CHECK_MASK + 1):,} "
                "custom events while its consumer was behind, without awaiting once: an "
                "async node can only be held back where it awaits, so they were piling up in "
                "memory. Write with `await writer.awrite(payload)` (it waits only while the "
                "consumer is behind), or await something in the loop."
            )

    def __repr__(self) -> str:
        return f"StreamWriter(node={self._task.node!r})"


def _bad_arguments(args: tuple[Any, ...]) -> NoReturn:
    raise StreamWriterError(
        f"A stream writer takes writer(payload) or writer('custom', payload); got "
        f"{len(args)} argument(s)"
        f"{' with mode ' + repr(args[0]) if len(args) == 2 else ''}."
    )


class _QuietWriter(StreamWriter):
    """The writer of every task of a run in which nothing wants custom events: it checks
    its arguments and emits nothing (a quiet run makes no writer per task)."""

    __slots__ = ()

    def __init__(self) -> None:
        pass

    def __call__(self, *args: Any) -> None:
        if len(args) != 1 and not (len(args) == 2 and args[0] == "custom"):
            _bad_arguments(args)

    async def awrite(self, *args: Any) -> None:
        self(*args)

    def __repr__(self) -> str:
        return "StreamWriter(quiet)"


_QUIET_WRITER = _QuietWriter()

_CHECK_MASK = 1023
"""A stream writer on the event loop checks for a flooded consumer every 1,024 writes."""
_STALL_LIMIT = 64
"""Checks in a row finding the consumer behind, the node never suspending, before a
writer refuses to pile up more (64 x 1,024 events beyond the consumer's queue)."""


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
    _active_task("dispatch_event()").emitter.emit(kind, data, name)


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
    task = current_task.get()  # (inline: nodes call this once per execution)
    if task is None:
        return _active_task("get_stream_writer()").writer  # raises
    return task._writer or task.writer


def get_config() -> Mapping[str, Any]:
    """The config of the node running in the current context (with ``streamWriter``).

    Raises :class:`~headwater.errors.StreamWriterError` outside a running node.

    Example::

        def node(state):
            thread = get_config()["configurable"].get("thread_id")
            return {}
    """
    return _active_task("get_config()").config
