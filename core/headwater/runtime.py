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
import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import Any

import anyio.from_thread
import attrs

from headwater.errors import StreamWriterError
from headwater.events import ON_CUSTOM_EVENT, Event, Subscription

__all__ = [
    "NodeMiddleware",
    "Run",
    "StreamWriter",
    "Task",
    "get_config",
    "get_stream_writer",
]


def new_id() -> str:
    """A fresh random run id (UUID4 string)."""
    return str(uuid.uuid4())


_NO_CALLBACKS: tuple[Callable[[Event], None], ...] = ()


class Run:
    """One execution of a compiled graph, as hooks see it.

    Attributes: ``run_id``, ``graph_name``, ``config`` (the run's config dict), ``input``,
    ``ns`` (namespace, ``()`` for a root run), ``parent_ids`` (run ids of enclosing runs).

    Example::

        @headwater.hookimpl
        def headwater_run_start(run):
            print(run.run_id, run.graph_name, run.config.get("configurable"))
    """

    __slots__ = (
        "_by_kind",
        "_loop_thread",
        "_seq",
        "_subs",
        "config",
        "graph_name",
        "input",
        "metadata",
        "ns",
        "parent_ids",
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
        ns: tuple[str, ...] = (),
        parent_ids: tuple[str, ...] = (),
        seq: list[int] | None = None,
    ) -> None:
        self.run_id = run_id or new_id()
        self.graph_name = graph_name
        self.config = config
        self.input = input
        self.ns = ns
        self.parent_ids = parent_ids
        self.tags: tuple[str, ...] = tuple(config.get("tags") or ())
        self.metadata: Mapping[str, Any] = config.get("metadata") or {}
        self._subs: list[Subscription] = []
        self._by_kind: dict[str, tuple[Callable[[Event], None], ...]] = {}
        self._seq = seq if seq is not None else [0]
        self._loop_thread = threading.get_ident()

    # -- subscriptions (resolved once per run) --------------------------------------

    def subscribe(self, subscription: Subscription) -> None:
        """Add a subscription before the run starts (used by ``astream`` and hooks)."""
        self._subs.append(subscription)
        self._by_kind.clear()

    def callbacks(self, kind: str) -> tuple[Callable[[Event], None], ...]:
        """The callbacks that want ``kind`` (empty tuple: nobody; do not build the event)."""
        try:
            return self._by_kind[kind]
        except KeyError:
            found = tuple(s.callback for s in self._subs if s.kinds is None or kind in s.kinds)
            self._by_kind[kind] = found or _NO_CALLBACKS
            return found

    @property
    def streaming(self) -> bool:
        """Whether anything subscribed to this run's events."""
        return bool(self._subs)

    def emit(
        self,
        callbacks: tuple[Callable[[Event], None], ...],
        kind: str,
        name: str,
        run_id: str,
        parent_ids: tuple[str, ...],
        tags: tuple[str, ...],
        metadata: Mapping[str, Any],
        data: Mapping[str, Any],
    ) -> None:
        """Build one event and hand it to ``callbacks`` (from :meth:`callbacks`)."""
        seq = self._seq
        seq[0] += 1
        event = Event(
            event=kind,
            name=name,
            run_id=run_id,
            parent_ids=parent_ids,
            tags=tags,
            metadata=metadata,
            data=data,
            seq=seq[0],
            ns=self.ns,
        )
        if threading.get_ident() == self._loop_thread:
            for callback in callbacks:
                callback(event)
        else:
            anyio.from_thread.run_sync(_deliver, callbacks, event)

    def __repr__(self) -> str:
        return f"Run(run_id={self.run_id!r}, graph_name={self.graph_name!r})"


def _deliver(callbacks: tuple[Callable[[Event], None], ...], event: Event) -> None:
    for callback in callbacks:
        callback(event)


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
    run_id: str = attrs.field(factory=new_id)
    _writer: StreamWriter | None = attrs.field(default=None, alias="_writer")
    _event_metadata: Mapping[str, Any] | None = attrs.field(default=None, alias="_event_metadata")
    _config: Mapping[str, Any] | None = attrs.field(default=None, alias="_config")

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

    __slots__ = ("_task",)

    def __init__(self, task: Task) -> None:
        self._task = task

    def __call__(self, *args: Any) -> None:
        if len(args) == 1:
            payload = args[0]
        elif len(args) == 2 and args[0] == "custom":
            payload = args[1]
        else:
            raise StreamWriterError(
                f"A stream writer takes writer(payload) or writer('custom', payload); got "
                f"{len(args)} argument(s){' with mode ' + repr(args[0]) if len(args) == 2 else ''}."
            )
        task = self._task
        run = task.run
        callbacks = run.callbacks(ON_CUSTOM_EVENT)
        if callbacks:
            run.emit(
                callbacks,
                ON_CUSTOM_EVENT,
                task.node,
                task.run_id,
                (*run.parent_ids, run.run_id),
                task.event_tags,
                task.event_metadata,
                payload if isinstance(payload, Mapping) else {"payload": payload},
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
